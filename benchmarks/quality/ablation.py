"""Table 4 (the paper's Figure 3): what each part of KaSA adds, on SST-2 and the paper's MRPC, CoLA, RTE.

    python benchmarks/quality/ablation.py [--jobs 2 --threads 1]

Steps, each adding one part (same data, schedule and seeds as the GLUE table, `glue.settings`):
truncation + LoRA (``learn_sigma=False``: sigma fixed at 1, beta = gamma = 0), + learned sigma
(beta = gamma = 0), + L2 (gamma = 0), + L3 (full KaSA: the GLUE table's ``kasa`` runs, reused, not retrained).
Also full KaSA with the authors' ``reference`` regulariser (``A^T A`` / ``B B^T`` Grams) next to the
``paper`` form (r x r Grams), the library's default, and full KaSA with the penalties summed over layers
(``reduction="sum"``, what PEFT's ``_get_kasa_loss`` computes) instead of averaged (the reference script's and
the library's default): the one way the ``peft-kasa`` baseline's objective differs from ours. SST-2 comes
first (the short schedule, which every adapter learns); MRPC, CoLA and RTE use the GLUE table's schedules.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `quality`

from quality import glue  # noqa: E402
from quality.harness import Record, Run, load_records, main  # noqa: E402
from quality.summary import bar_plot, cells, label, machine_line, metric, stat_table  # noqa: E402

TABLE = "ablation"
TASKS = ("sst2", "mrpc", "cola", "rte")
FULL = "+ L3 (KaSA)"
STEPS = {"truncation + LoRA": {"learn_sigma": False, "beta": 0.0, "gamma": 0.0},
         "+ learned sigma": {"beta": 0.0, "gamma": 0.0},
         "+ L2": {"gamma": 0.0}}
REFERENCE = "KaSA, reference regulariser"
SUMMED = "KaSA, summed over layers (PEFT)"
VARIANTS = (*STEPS, FULL, REFERENCE, SUMMED)


def runs() -> list[Run]:
    changes = {**STEPS, REFERENCE: {"regularizer": "reference"}, SUMMED: {"reduction": "sum"}}
    return [Run(f"{task}-{_slug(variant)}-s{seed}", glue.settings(task, "kasa", seed, **change),
                {"task": task, "variant": variant, "seed": seed})
            for task in TASKS for seed in glue.SEEDS for variant, change in changes.items()]


def full_kasa_records(results: Path) -> list[Record]:
    """The GLUE table's ``kasa`` runs of the ablation's tasks, labelled as the ablation's last step."""
    return [{**record, "labels": {**record["labels"], "variant": FULL}}
            for record in load_records(results, glue.TABLE, glue.runs())
            if record["labels"]["method"] == "kasa" and record["labels"]["task"] in TASKS]


def summarise(records: list[Record], out: Path) -> None:
    tasks = [t for t in TASKS if any(label(r, "task") == t for r in records)]  # those with ablation runs
    ablated = {(label(r, "task"), label(r, "seed")) for r in records}  # full KaSA from the same seeds as the rest
    records = records + [r for r in full_kasa_records(out.parent) if (label(r, "task"), label(r, "seed")) in ablated]
    stats = cells(records, "variant", "task", metric)
    seeds_of = {t: sorted(seed for task, seed in ablated if task == t) for t in tasks}
    seeds = "; ".join(f"{t}: {', '.join(map(str, seeds_of[t]))}" for t in tasks)
    table = stat_table(stats, VARIANTS, tasks, "variant", lambda t: f"{t} ({glue.METRIC_NAMES[t]})")
    (out / "summary.md").write_text(
        "# Ablation (Figure 3): truncation + LoRA, + learned sigma, + L2, + L3; regulariser forms\n\n"
        f"Best dev epoch (x100), mean ± std over the seeds each task has ({seeds}); settings of the GLUE "
        f"table (MiniLM-L6, r = 8 on query/value; "
        f"{'; '.join(f'{t}: {glue.SCHEDULES[t].describe()}' for t in tasks)}). "
        f"'{FULL}' is the GLUE table's kasa runs (paper-form regulariser).\n\n{table}\n"
        f"Machine: {machine_line(records)}.\nCommand: `python benchmarks/quality/ablation.py`\n")
    bar_plot(stats, VARIANTS, tasks, out / "ablation.png", "KaSA ablation, MiniLM-L6, r=8", "best dev epoch (x100)")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


if __name__ == "__main__":
    sys.exit(main(TABLE, runs(), summarise))
