"""E2E on its whole test set: the E2E table's training, scored on all 630 test MRs with greedy decoding.

    python benchmarks/quality/e2e_full.py [--jobs 1 --threads 1]
    python benchmarks/quality/e2e_bootstrap.py --table e2e_full

Issue 13: where the E2E table's 50 test MRs leave kasa-auto and LoRA within noise of each other, measure on more
MRs rather than conclude from noise. The adapters are the E2E table's own (`harness.scored_again`: a run of
`e2e.py` that has not run is trained first, into that table's run directory) for kasa-auto (sigma started at
randn and at ones), lora, pissa and milora, scored on every distinct test MR (630, 12.6 times as many, all their
references) with greedy decoding (no-repeat 4-grams kept) instead of beam 4, which keeps decoding them affordable
on a CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `quality`

from quality import e2e  # noqa: E402
from quality.harness import Record, Run, main, scored_again  # noqa: E402

TABLE = "e2e_full"
METHODS = ("kasa-auto", "kasa-auto-ones", "lora", "pissa", "milora")
ROWS = METHODS  # no added baselines on the 630 MRs
SEEDS = e2e.SEEDS
EVALUATION = {"max_eval_samples": None, "num_beams": 1, "length_penalty": 1.0}


def runs() -> list[Run]:
    return [scored_again(run, e2e.TABLE, run.id.replace("e2e-", "e2e-full-", 1), EVALUATION)
            for run in e2e.runs(methods=METHODS)]


def summarise(records: list[Record], out: Path) -> None:
    e2e.write_summary(records, out, "E2E NLG on the whole test set",
                      f"the E2E table's training ({e2e.TRAIN_SAMPLES} fixed examples, 1 epoch, batch 8, lr 5e-4); all "
                      "630 test MRs (all their references), greedy decoding with no-repeat 4-grams", METHODS,
                      "kasa-auto is kasa with `drop_rank: auto`; kasa-auto-ones is kasa-auto with `sigma_init: "
                      "ones`. MR by MR: `python benchmarks/quality/e2e_bootstrap.py --table e2e_full`.",
                      "python benchmarks/quality/e2e_full.py")


if __name__ == "__main__":
    sys.exit(main(TABLE, runs(), summarise))
