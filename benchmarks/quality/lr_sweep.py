"""The learning-rate choice for the GLUE-based tables: a small sweep on LoRA only, applied to every method.

    python benchmarks/quality/lr_sweep.py [--jobs 2 --threads 1]

The paper's learning rates are tuned for 100 epochs on the full data; the GLUE table here trains a few
epochs on a subset. This sweep trains ``lora`` (never ``kasa``, so the choice does not favour ours) in the
short schedule (``glue.SHORT``) at seed 0 on ``TASKS`` for each learning rate in ``LRS``, one rate for adapter
and head. Its best rate on SST-2 is ``glue.SHORT.lr``; on the other tasks no rate learned anything, which is
why they get ``glue.LONG`` (see glue.py).

``glue.LONG`` left CoLA at MCC 0 for every method (every dev sentence predicted acceptable), so CoLA gets its
own probe, again LoRA only at seed 0: ``COLA_PROBES``, variations of ``glue.LONG`` with more data, a higher
rate or more epochs.

A method whose paper trains it at a very different rate gets its own probe (``method_probes``), at seed 0 in one
table's schedule, with factors on that table's rate for the adapter (a classification head keeps its rate): VeRA,
whose paper trains RoBERTa at about ten times LoRA's rate, on MRPC (the GLUE table's long schedule, which four of
its five tasks use), and prefix tuning, usually trained at 1e-2 or more, in the commonsense table's schedule. The
best factor goes to ``harness.METHOD_LR_FACTOR`` and from there to every table. On GLUE "best" is the dev score,
as for the table's rates; the commonsense table reports its test sets, so there the factor is chosen by the mean
training loss, which the summary shows beside the test score, and the test sets choose nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `quality`

from quality import commonsense, glue  # noqa: E402
from quality.glue import Schedule  # noqa: E402
from quality.harness import Record, Run, at_lr_factor, main, method_options  # noqa: E402
from quality.summary import cells, machine_line, markdown_table, metric, stat_table  # noqa: E402

TABLE = "lr_sweep"
TASKS = ("sst2", "mrpc", "stsb", "rte", "cola")
LRS = (1e-3, 3e-3, 1e-2)
COLA_PROBES = {"all-data": glue.ALL_DATA,
               "lr-x4": Schedule(train_samples=2048, epochs=3, lr=2e-3, head_lr=2e-2),
               "10-epochs": Schedule(train_samples=2048, epochs=10, lr=5e-4, head_lr=5e-3)}
# Per probed method: 1, 10 and 30; prefix tuning also 100, because its training loss still fell steeply at 30.
FACTORS = {"vera": (1.0, 10.0, 30.0), "prefix": (1.0, 10.0, 30.0, 100.0)}


def runs() -> list[Run]:
    sweep = [Run(f"{task}-lora-lr{lr:g}-s0", glue.settings(task, "lora", 0, glue.SHORT, lr=lr),
                 {"task": task, "lr": lr}) for task in TASKS for lr in LRS]
    probes = [Run(f"cola-lora-{name}-s0", glue.settings("cola", "lora", 0, plan), {"task": "cola", "probe": name})
              for name, plan in COLA_PROBES.items()]
    return sweep + probes + method_probes()


def method_probes() -> list[Run]:
    """Each probed method at seed 0 in its table's schedule, the adapter at its ``FACTORS`` times the table's
    rate."""
    tables = {("mrpc", "vera"): glue.settings("mrpc", "vera", 0, lr=glue.LONG.lr, head_lr=glue.LONG.head_lr),
              ("commonsense", "prefix"): {**commonsense.SETTINGS, **method_options("prefix"), "seed": 0}}
    return [Run(f"{task}-{method}-x{factor:g}-s0", at_lr_factor(settings, factor),
                {"task": task, "method": method, "factor": factor})
            for (task, method), settings in tables.items() for factor in FACTORS[method]]


def summarise(records: list[Record], out: Path) -> None:
    probes = [r for r in records if "probe" in r["labels"]]
    by_factor = [r for r in records if "factor" in r["labels"]]
    records = [r for r in records if "probe" not in r["labels"] and "factor" not in r["labels"]]
    stats = cells(records, "lr", "task", metric)
    table = stat_table(stats, LRS, TASKS, "lr (lora, seed 0)", lambda t: f"{t} ({glue.METRIC_NAMES[t]})")
    (out / "summary.md").write_text(
        "# Learning-rate choice: LoRA only, seed 0, the GLUE table's short schedule\n\n"
        f"Best dev epoch (x100).\n\n{table}\n"
        "## CoLA schedule probe: LoRA only, seed 0, variations of the long schedule (which gave MCC 0)\n\n"
        + markdown_table(["probe", "schedule", "CoLA MCC (best dev epoch, x100)"],
                         [[r["labels"]["probe"], COLA_PROBES[r["labels"]["probe"]].describe(), f"{metric(r):.1f}"]
                          for r in probes])
        + "\n## A method's own rate: seed 0, one task, factors on the task's rate (adapter only)\n\n"
        + markdown_table(["method", "task", "factor", "lr", "mean training loss", "score (x100; GLUE: best dev epoch)"],
                         [[r["labels"]["method"], r["labels"]["task"], f"{r['labels']['factor']:g}",
                           f"{r['run']['config']['lr']:.3g}", f"{r['run']['train_loss']:.3f}", f"{metric(r):.1f}"]
                          for r in by_factor])
        + f"\nMachine: {machine_line(records + probes + by_factor)}.\n"
        "Command: `python benchmarks/quality/lr_sweep.py`\n")


if __name__ == "__main__":
    sys.exit(main(TABLE, runs(), summarise))
