"""How ``drop_budget`` decides what ``drop_rank="auto"`` drops, on the two real models at r = 8 (the record behind
the default budget of 0.5% and the "which modules lose what" statements of the docs).

    python benchmarks/quality/drop_budget.py [--samples 64]

Two tables, both from the library's pre-flight check (`kasa_peft.analysis.truncation_report` and
`kasa_peft.pipelines.preflight`, what ``kasa-peft inspect`` prints):

* per model and target module: the share of ``||W||_F`` the r = 8 smallest singular components carry (mean and
  max over layers), and the mean number ``d`` of components ``"auto"`` drops per layer at each budget of
  ``BUDGETS``; MiniLM with ``query, key, value, dense``, SmolLM2 with ``all-linear``;
* on SmolLM2, the E2E loss of the untrained truncated model (the E2E table's start, ``B = 0``, the first
  ``--samples`` training examples, prompt masked) for three target sets (the E2E table's ``q_proj, v_proj``, the
  commonsense table's ``q, k, v, up, down_proj``, and ``all-linear``), with the paper's truncation and with
  ``"auto"`` at each budget.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `quality`

from common import machine_info, machine_sentence, write_results  # noqa: E402
from kasa_peft.analysis import truncation_report  # noqa: E402
from kasa_peft.core import KasaConfig  # noqa: E402
from kasa_peft.models import load_model, natural_task  # noqa: E402
from kasa_peft.pipelines.preflight import preflight  # noqa: E402
from kasa_peft.pipelines.targets import COMMONSENSE_TARGETS  # noqa: E402
from quality import e2e  # noqa: E402
from quality.harness import DATA, RESULTS  # noqa: E402
from quality.summary import markdown_table  # noqa: E402

RESULTS_ROOT = Path(__file__).resolve().parents[1] / "results"  # common.write_results' root

TABLE = "drop_budget"
R = 8
BUDGETS = (0.005, 0.01, 0.02, 0.05)
MODULE_TARGETS = {"minilm": ("query", "key", "value", "dense"), "smollm2": "all-linear"}
LOSS_TARGETS = (("q_proj", "v_proj"), tuple(COMMONSENSE_TARGETS), ("all-linear",))


def module_rows(model_name: str) -> list[list[str]]:
    """Per target module: the share the R smallest components carry, mean (max), and the mean d per budget."""
    model, _ = load_model(model_name, natural_task(model_name))
    targets = MODULE_TARGETS[model_name]
    paper = truncation_report(model, KasaConfig(r=R, target_modules=targets))
    auto = {budget: {m.module: m for m in truncation_report(
        model, KasaConfig(r=R, target_modules=targets, drop_rank="auto", drop_budget=budget)).modules()}
        for budget in BUDGETS}
    rows = []
    for module in paper.modules():
        shape = "mixed" if module.shape == (-1, -1) else f"{module.shape[0]} x {module.shape[1]}"
        rows.append([model_name, module.module, shape, str(len(module.dropped)),
                     f"{100 * module.mean_share:.2f}% ({100 * module.max_share:.2f}%)",
                     *(f"{statistics.fmean(auto[b][module.module].dropped):.2f}" for b in BUDGETS)])
    return rows


def loss_row(targets: tuple[str, ...], samples: int, data_dir: Path) -> tuple[list[str], float]:
    """The untrained truncated model's E2E loss with the paper's truncation and with "auto" at each budget."""
    settings = {**e2e.SETTINGS, "target_modules": list(targets), "data_dir": str(data_dir)}
    losses, base = [], None
    for drop_rank, budget in (("r", None), *(("auto", b) for b in BUDGETS)):
        report = preflight({**settings, "drop_rank": drop_rank, "drop_budget": budget}, samples)
        base = report.base_loss
        losses.append(f"{report.truncated_loss:.3f}")
        print(targets, drop_rank, budget, losses[-1], flush=True)
    return [",".join(targets), *losses], base


def main(argv: list[str] | None = None, results: Path = RESULTS) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--data-dir", type=Path, default=DATA, help=f"the benchmark data (default {DATA})")
    args = parser.parse_args(argv)
    info = machine_info()
    modules = [row for name in MODULE_TARGETS for row in module_rows(name)]
    losses = [loss_row(targets, args.samples, args.data_dir) for targets in LOSS_TARGETS]
    budgets = [f"{b:.1%}" for b in BUDGETS]
    source = info["source"]
    markdown = (
        f"# What `drop_rank: auto` drops at each `drop_budget` (r = {R})\n\n"
        f"Per target module: the share of `||W||_F` its {R} smallest singular components carry (mean over the "
        f"module's layers, max in brackets: what the paper's truncation removes), and the mean number d of "
        f"components `drop_rank: auto` drops per layer at each budget (the most d <= {R} whose components carry "
        f"at most the budget of `||W||_F`).\n\n"
        + markdown_table(["model", "module", "shape", "layers", f"{R} smallest carry, mean (max)",
                          *(f"mean d at {b}" for b in budgets)], modules)
        + f"\nSmolLM2's E2E loss before training (the E2E table's start: the first {args.samples} training "
          f"examples, prompt masked, B = 0, so the model is the base minus the dropped components). The base "
          f"model's loss is {losses[0][1]:.3f}.\n\n"
        + markdown_table(["targets", f"paper (d = {R})", *(f"auto {b}" for b in budgets)], [r for r, _ in losses])
        + f"\nMachine: {machine_sentence(info, ('torch', 'transformers'))} Code: commit "
          f"{str(source['commit'])[:12]}{' with uncommitted changes' if source['dirty'] is True else ''}.\n")
    out = results / TABLE
    write_results(str((out / "summary").relative_to(RESULTS_ROOT)),
                  {"machine": info, "r": R, "budgets": list(BUDGETS), "samples": args.samples, "modules": modules,
                   "losses": [row for row, _ in losses], "base_loss": losses[0][1]}, markdown)
    print(f"{TABLE}: {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
