"""How far each method moved the adapted weights in the GLUE table: relative update ||W' - W||_F / ||W||_F.

    python benchmarks/quality/update_norms.py [--task stsb]

No training: it merges each method's seed-0 run of the GLUE table (kept under
``runs/quality/glue/<task>-<method>-s0/output`` by ``glue.py``) into a fresh MiniLM and compares every
``query``/``value`` weight with the base's. Same schedule for every method, so this shows whether a method
that did not learn made a small update (a too-slow start) or a large, wrong one. For ``kasa`` the change
includes the truncation (the dropped minor components); for ``pissa``/``milora`` it is the net change
relative to the original base, which is what they save.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `quality`

from kasa_peft import merge_and_unload  # noqa: E402
from kasa_peft.models import load_model  # noqa: E402
from kasa_peft.training import load_trained  # noqa: E402
from quality import glue  # noqa: E402
from quality.harness import RESULTS, WORK  # noqa: E402
from quality.summary import markdown_table  # noqa: E402

TABLE = "update_norms"
TARGETS = ("query", "value")


def run_dir(work: Path, task: str, method: str) -> Path:
    return work / glue.TABLE / f"{task}-{method}-s0" / "output"


def target_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The ``query``/``value`` weights of a plain (merged) BERT, by module name."""
    return {name: module.weight.detach() for name, module in model.named_modules()
            if name.rsplit(".", 1)[-1] in TARGETS and hasattr(module, "weight")}


def fresh_base(task: str) -> torch.nn.Module:
    """MiniLM as the GLUE table loads it for ``task`` (a regression head for STS-B)."""
    return load_model(glue.MODEL, "sequence_classification", num_labels=1 if task == "stsb" else 2)[0]


def merged_weights(task: str, method: str, directory: Path) -> dict[str, torch.Tensor]:
    trained = load_trained(fresh_base(task), directory, method)
    if method == "kasa":
        trained = merge_and_unload(trained)
    elif method != "fft":
        trained = trained.merge_and_unload()
    return target_weights(trained)


def relative_updates(base: dict[str, torch.Tensor], merged: dict[str, torch.Tensor]) -> list[float]:
    if merged.keys() != base.keys():
        raise ValueError(f"the merged model's targets {sorted(merged)} differ from the base's {sorted(base)}")
    return [((merged[n] - base[n]).norm() / base[n].norm()).item() for n in base]


def main(argv: list[str] | None = None, work: Path = WORK, results: Path = RESULTS) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="stsb", choices=glue.TASKS)
    task = parser.parse_args(argv).task
    base_weights = target_weights(fresh_base(task))
    rows = []
    for method in glue.METHODS:
        directory = run_dir(work, task, method)
        if not (directory / "kasa_peft_method.json").is_file():
            print(f"skipping {method}: no finished run in {directory}; train it with "
                  f"`{glue.retrain_command([f'{task}-{method}-s0'], work)}`")
            continue
        updates = relative_updates(base_weights, merged_weights(task, method, directory))
        rows.append([method, f"{100 * statistics.fmean(updates):.2f}", f"{100 * min(updates):.2f}",
                     f"{100 * max(updates):.2f}"])
    if not rows:
        return 1
    out = results / TABLE
    out.mkdir(parents=True, exist_ok=True)
    (out / f"summary_{task}.md").write_text(
        f"# Size of the update, {task}, seed 0\n\n"
        f"||W' - W||_F / ||W||_F (%) over the {len(base_weights)} query/value weights of MiniLM-L6 after the GLUE "
        f"table's schedule ({glue.SCHEDULES[task].describe()}); W' is the merged trained model.\n\n"
        + markdown_table(["method", "mean %", "min %", "max %"], rows)
        + f"\nCommand: `python benchmarks/quality/update_norms.py --task {task}`\n")
    print(f"{TABLE}: {out / f'summary_{task}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
