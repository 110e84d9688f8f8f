"""Table 5 (the paper's Figure 4): dev score against the rank r in {1, 2, 4, 8, 16, 32} on one GLUE task.

    python benchmarks/quality/rank_sweep.py [--jobs 2 --threads 1]

kasa, lora, pissa and milora with the GLUE table's settings (`glue.settings`) and ``alpha = 2 r``, so the
update's scale ``alpha / r`` stays 2 as at r = 8; the r = 8 points are the GLUE table's runs, reused.
Seeds run seed-major, so a partial sweep has whole curves (``--only sst2-s0-``: seed 0 alone).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `quality`

from quality import glue  # noqa: E402
from quality.harness import Record, Run, load_records, main  # noqa: E402
from quality.summary import cells, label, line_plot, machine_line, metric, stat_table  # noqa: E402

TABLE = "rank_sweep"
TASK = "sst2"  # the task every adapter learns in the short schedule (on MRPC they stay at the majority class)
METHODS = ("kasa", "lora", "pissa", "milora")
RANKS = (1, 2, 4, 8, 16, 32)
REUSED_RANK = 8  # the GLUE table's rank


def runs() -> list[Run]:
    return [Run(f"{TASK}-s{seed}-r{r}-{method}", glue.settings(TASK, method, seed, r=r, alpha=2.0 * r),
                {"method": method, "r": r, "seed": seed})
            for seed in glue.SEEDS for r in RANKS if r != REUSED_RANK for method in METHODS]


def glue_records(results: Path) -> list[Record]:
    """The GLUE table's runs of ``TASK`` and ``METHODS``, labelled with their rank."""
    return [{**record, "labels": {**record["labels"], "r": REUSED_RANK}}
            for record in load_records(results, glue.TABLE, glue.runs())
            if record["labels"]["task"] == TASK and record["labels"]["method"] in METHODS]


def summarise(records: list[Record], out: Path) -> None:
    seeds = {label(r, "seed") for r in records}  # r = 8 from the same seeds as the other ranks
    records = records + [r for r in glue_records(out.parent) if label(r, "seed") in seeds]
    stats = cells(records, "method", "r", metric)
    table = stat_table(stats, METHODS, RANKS, "method", lambda r: f"r = {r}")
    (out / "summary.md").write_text(
        f"# Rank sweep (Figure 4) on {TASK} ({glue.METRIC_NAMES[TASK]})\n\n"
        f"Best dev epoch (x100), mean ± std over the finished seeds ({', '.join(map(str, sorted(seeds)))}); "
        "alpha = 2r; other settings as the GLUE table (r = 8: its runs).\n\n"
        f"{table}\nMachine: {machine_line(records)}.\nCommand: `python benchmarks/quality/rank_sweep.py`\n")
    line_plot(stats, METHODS, RANKS, out / "rank_sweep.png", f"{TASK}: dev score vs rank (MiniLM-L6)", "rank r",
              f"best dev {glue.METRIC_NAMES[TASK]} (x100)")


if __name__ == "__main__":
    sys.exit(main(TABLE, runs(), summarise))
