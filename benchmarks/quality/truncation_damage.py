"""What KaSA's truncation does to SmolLM2 before any training, per target module (the E2E table's diagnosis),
with the paper's truncation (``d = r``) and the automatic one (``drop_rank="auto"``, default budget).

    python benchmarks/quality/truncation_damage.py [--samples 64]

For each target set and truncation it runs the library's pre-flight check (`kasa_peft.pipelines.preflight`, what
``kasa-peft inspect --model smollm2 --task e2e ...`` prints) on the exact state an E2E run of the E2E table starts
from (same data, seed and r = 8; the adapter's ``B = 0``, so the model is the base with the ``d`` smallest singular
components of each target removed) and reports:

* the share of each weight's norm the truncation removes (`dropped_share`), mean and max over layers, and the
  mean ``d`` per layer;
* the language-model loss on the first ``--samples`` training examples (prompt tokens masked, as in training),
  next to the base model's (the same model with the adapter disabled).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `quality`

from kasa_peft.core.config import DEFAULT_DROP_BUDGET  # noqa: E402
from kasa_peft.analysis.truncation_report import TruncationReport  # noqa: E402
from kasa_peft.pipelines.preflight import preflight  # noqa: E402
from quality import e2e  # noqa: E402
from quality.harness import DATA, RESULTS  # noqa: E402
from quality.summary import markdown_table  # noqa: E402

TABLE = "truncation_damage"
TARGET_SETS = (("q_proj",), ("k_proj",), ("v_proj",), ("o_proj",), ("q_proj", "v_proj"))
DROP_RANKS = ("r", "auto")


def measure(targets: tuple[str, ...], drop_rank: str, samples: int, data_dir: Path = DATA) -> TruncationReport:
    """The pre-flight report of an E2E-table run with these targets and truncation, on ``samples`` examples."""
    settings = {**e2e.SETTINGS, "target_modules": list(targets), "drop_rank": drop_rank, "data_dir": str(data_dir)}
    return preflight(settings, samples)


def row(targets: tuple[str, ...], drop_rank: str, report: TruncationReport) -> list[str]:
    shares = [layer.share for layer in report.layers]
    return [",".join(targets), drop_rank, f"{100 * statistics.fmean(shares):.2f}", f"{100 * max(shares):.2f}",
            f"{statistics.fmean(layer.dropped for layer in report.layers):.2f}", f"{report.truncated_loss:.3f}"]


def main(argv: list[str] | None = None, results: Path = RESULTS) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--data-dir", type=Path, default=DATA, help=f"the benchmark data (default {DATA})")
    args = parser.parse_args(argv)
    rows, base_loss = [], None
    for targets in TARGET_SETS:
        for drop_rank in DROP_RANKS:
            report = measure(targets, drop_rank, args.samples, args.data_dir)
            base_loss = report.base_loss
            rows.append(row(targets, drop_rank, report))
            print(rows[-1], flush=True)
    out = results / TABLE
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(
        "# KaSA's truncation on SmolLM2-135M before training (r = 8)\n\n"
        f"Share of each weight's norm removed (%, over the 30 layers), the mean number d of components dropped per "
        f"layer, and the loss on the first {args.samples} E2E training examples of the E2E table (prompt masked) "
        f"of the untrained KaSA model (B = 0: the base minus its d smallest singular components per target), "
        f"with the paper's truncation (drop_rank r: d = 8) and the automatic one (drop_rank auto: per layer the "
        f"most d <= 8 within {DEFAULT_DROP_BUDGET:.1%} of ||W||_F). The base model's loss is {base_loss:.3f}.\n\n"
        + markdown_table(["targets", "drop_rank", "removed, mean %", "removed, max %", "mean d", "E2E loss"], rows)
        + f"\nCommand: `python benchmarks/quality/truncation_damage.py --samples {args.samples}`\n")
    print(f"{TABLE}: {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
