"""Table 1: GLUE at small scale with the pretrained MiniLM-L6, every method, r = 8 on query/value, 3 seeds.

    python benchmarks/quality/glue.py [--jobs 2 --threads 1] [--only TASK]

Sized for 2 shared CPU cores. Every method sees, per task, the same fixed training subset (drawn once with the
pipeline's subset seed), the same dev examples (at most ``DEV_SAMPLES``: full MRPC and RTE, fixed subsets of
CoLA, SST-2 and STS-B), the same schedule and the same seeds; batch 16, 6% warm-up, linear decay, max length
128, dev evaluation after every epoch. beta and gamma are the paper's per task (they matter to kasa and
peft-kasa only). Reported: the best dev epoch (the GLUE protocol the paper follows), x100: MCC for CoLA,
accuracy for SST-2, MRPC, RTE, Pearson for STS-B.

The schedule is chosen per task, once, on LoRA alone, and applied to every method (`SCHEDULES`):

* ``SHORT`` (SST-2): 512 examples, 2 epochs, lr 1e-2 for adapter and head, the best of 1e-3, 3e-3, 1e-2 in
  ``lr_sweep.py`` (the paper's rates, tuned for 100 epochs, left the models at the majority class here);
* ``LONG`` (MRPC, STS-B, RTE): in the short schedule no learning rate learned MRPC, STS-B, RTE or CoLA
  (``lr_sweep.py``: majority class, Pearson below 0.2, MCC 0). Frozen MiniLM features with a ridge regression
  reach STS-B Pearson 0.66, so the data are learnable; one head learning rate for adapter and head was the
  problem (at 1e-3 and above the regression collapsed to the mean, at 3e-4 the head barely moved: 0.20 after 3
  epochs). A separate head rate, as in the reference code's ``head_lr``, fixed it: LoRA at lr 5e-4, head 5e-3,
  2048 examples, 3 epochs reached Pearson 0.80 on STS-B dev after 2 epochs (seed 0, one probe, then fixed).

* ``ALL_DATA`` (CoLA): ``LONG`` left CoLA at MCC 0 for kasa, peft-kasa, lora, pissa and milora at every seed
  (every dev sentence predicted acceptable). A LoRA probe at seed 0 (``lr_sweep.py``: all 8551 training
  sentences, or 4x the rates, or 10 epochs) picked all the data: MCC 17.7 against 7.4 and 8.0.

``fft`` trains everything at ``FFT_LR`` (an adapter's rate makes full fine-tuning diverge), its head at the
schedule's head rate.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `quality`

from quality.harness import Record, Run, main, with_method, own_rates  # noqa: E402
from quality.summary import (  # noqa: E402
    bar_plot, beaten_by, cells, concurrency, group, machine_line, matched_ratio, metric, row_average, stat_table,
)

TABLE = "glue"
MODEL = "minilm"
# Run in this order (task by task, seed by seed), so an interrupted table has whole tasks and seeds.
TASKS = ("sst2", "mrpc", "stsb", "rte", "cola")
METHODS = ("kasa", "peft-kasa", "lora", "pissa", "milora", "dora", "adalora", "fft")
# The paper's other NLU baselines (its GLUE table: BitFit, Adapter^H, Adapter^P, AdapterDrop, DyLoRA, VeRA), on
# the same schedules (issue 25).
BASELINES = ("bitfit", "adapter-h", "adapter-p", "adapter-d", "dylora", "vera")
ROWS = METHODS + BASELINES
SEEDS = (0, 1, 2)
DEV_SAMPLES = 500
FFT_LR = 1e-4


@dataclass(frozen=True)
class Schedule:
    """A task's training budget and learning rates (``head_lr`` None: the head at ``lr``)."""

    train_samples: int
    epochs: int
    lr: float
    head_lr: float | None = None

    def describe(self) -> str:
        head = f", head {self.head_lr:g}" if self.head_lr else ""
        return f"{self.train_samples} examples, {self.epochs} epochs, lr {self.lr:g}{head}"


SHORT = Schedule(train_samples=512, epochs=2, lr=1e-2)
LONG = Schedule(train_samples=2048, epochs=3, lr=5e-4, head_lr=5e-3)
ALL_DATA = Schedule(train_samples=8551, epochs=3, lr=5e-4, head_lr=5e-3)  # CoLA's whole training set
SCHEDULES = {"sst2": SHORT, "mrpc": LONG, "stsb": LONG, "rte": LONG, "cola": ALL_DATA}
# The paper's per-task (beta, gamma) for RoBERTa-base (KASA_METHOD.md, section 5; RTE: the second pair).
PAPER = {"cola": (1e-4, 1e-3), "sst2": (1e-4, 1e-3), "mrpc": (0.1, 1e-3), "rte": (0.01, 1e-5), "stsb": (1e-4, 1e-5)}
METRIC_NAMES = {"cola": "MCC", "sst2": "acc", "mrpc": "acc", "rte": "acc", "stsb": "Pearson"}


def settings(task: str, method: str, seed: int, schedule: Schedule | None = None, **changes) -> dict:
    """The `RunConfig` settings of one GLUE run of this suite (shared by the ablation, rank and lr sweeps);
    ``schedule`` defaults to the task's."""
    beta, gamma = PAPER[task]
    plan = schedule or SCHEDULES[task]
    head = {"head_lr": plan.head_lr} if plan.head_lr else {}
    table = {"task": f"glue:{task}", "model": MODEL, "method": method, "r": 8, "alpha": 16.0,
             "target_modules": ["query", "value"], "lr": FFT_LR if method == "fft" else plan.lr, **head,
             "beta": beta, "gamma": gamma, "epochs": plan.epochs, "batch_size": 16, "max_length": 128,
             "eval_every_epoch": True, "eval_batch_size": 64, "max_train_samples": plan.train_samples,
             "max_eval_samples": DEV_SAMPLES, "seed": seed}
    return {**with_method(table, method), **changes}


def retrain_command(run_ids: Sequence[str], work: Path) -> str:
    """The command that trains these runs' adapters again into ``work`` (for the analysis scripts). The repository
    keeps the runs' records, not their adapters, and a record marks its run finished, so the new records go to
    ``work`` instead of the committed results."""
    return (f"python benchmarks/quality/glue.py --work {work} --results {work / 'rerun-records'} "
            f"--only {' '.join(run_ids)}")


def runs() -> list[Run]:
    return [Run(f"{task}-{method}-s{seed}", settings(task, method, seed),
                {"task": task, "method": method, "seed": seed})
            for task in TASKS for seed in SEEDS for method in ROWS]


def summarise(records: list[Record], out: Path) -> None:
    stats = cells(records, "method", "task", metric)
    tasks = [t for t in TASKS if any((m, t) in stats for m in ROWS)]
    complete = [t for t in tasks if ("kasa", t) in stats and stats[("kasa", t)].n == len(SEEDS)]
    average = row_average(records, "method", "task", complete, "seed", metric)
    by_method = group(records, ("method",))
    params = {m: _distinct(r["run"]["trainable_parameters"] for r in by_method[(m,)]) for m in ROWS
              if (m,) in by_method}
    wall = {m: f"{ratio:.2f}" for m, ratio in matched_ratio(records, "method", "lora", ("task", "seed"),
                                                             lambda r: r["run"]["wall_time_seconds"]).items()}
    average_title = f"avg ({', '.join(complete) or 'no task with every seed'})"
    table = stat_table(stats, ROWS, tasks, "method", lambda t: f"{t} ({METRIC_NAMES[t]})",
                       extra={average_title: {m: s.format() for m, s in average.items()}, "trainable params": params,
                              "wall time / LoRA": wall})
    final = stat_table(cells(records, "method", "task", lambda r: metric(r, "final")), ROWS, tasks, "method")
    losses = beaten_by(stats, "kasa", ROWS, tasks)
    schedules = "; ".join(f"{t}: {SCHEDULES[t].describe()}" for t in tasks)
    verdict = "\n".join(f"- {t}: " + (f"KaSA's mean is below {', '.join(losses[t])}." if losses[t]
                                       else "no method's mean is above KaSA's.") for t in tasks)
    (out / "summary.md").write_text(
        f"# GLUE, MiniLM-L6 (`{MODEL}`), r = 8 on query/value\n\n"
        f"Best dev epoch (x100), mean ± std over seeds {', '.join(map(str, SEEDS))} "
        f"(n per cell: {_distinct(s.n for s in stats.values())}); bold: best mean per task. "
        f"Per task, every method: {schedules}; fixed training subsets, dev at most {DEV_SAMPLES} fixed examples "
        f"(full MRPC and RTE); batch 16, max length 128; fft at lr {FFT_LR:g}. Schedules chosen on LoRA alone "
        "(module docstring of glue.py). "
        f"{own_rates(ROWS)}"
        "avg: over the tasks where kasa has every seed, mean per seed, then mean ± std over the seeds a method "
        "has for all those tasks (a single value: one seed). "
        "wall time / LoRA: median over the (task, seed) runs both finished on the same machine of the ratio of "
        "wall times (—: no LoRA run on the machine); "
        f"{concurrency(records)} runs trained at a time on 2 CPU cores shared with other work (load varied), "
        "so only large differences mean anything.\n\n"
        f"{table}\nKaSA against the others (means):\n\n{verdict}\n\n"
        f"## Final epoch instead of best\n\n{final}\n"
        f"Machine: {machine_line(records)}.\nCommand: `{records[0]['command']}`\n")
    bar_plot(stats, ROWS, tasks, out / "glue.png", f"GLUE dev, MiniLM-L6, r=8 (up to {len(SEEDS)} seeds)",
             "best dev epoch (x100)")


def _distinct(values) -> str:
    return " / ".join(str(v) for v in sorted(set(values)))


if __name__ == "__main__":
    sys.exit(main(TABLE, runs(), summarise))
