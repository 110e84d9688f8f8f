"""The quality benchmarks' runner: a grid of training runs, each in a fresh process, resumable.

A table is a list of `Run` (an id, the `RunConfig` settings, and the labels the summary groups by). A run
whose record ``<results>/<table>/runs/<id>.json`` exists with the same settings is finished and skipped (a
record or run directory left by different settings is stale: replaced); the others are trained one
per subprocess (``worker.py``: same starting state for every run, whatever ran before), ``jobs`` at a time,
with their adapters and logs under ``<work>/<table>/<id>/``. An interrupted run resumes from its last
epoch checkpoint. A run ``scored_again`` evaluates the adapter a run of another table trained, with other
evaluation settings, instead of training it a second time. The record is ``metrics.json`` of the run plus the
table's labels, the machine and the command, so the summary markdown and plots can be regenerated from the
records alone. Where the benchmark data lives (``--data-dir``) is not a setting: a run's record stays valid when
the data move.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results" / "quality"
WORK = REPO / "runs" / "quality"  # adapters and logs; git ignores /runs/
DATA = REPO.parent / "shared" / "data"  # the benchmark data, next to the checkout
WORKER = Path(__file__).with_name("worker.py")
Record = dict[str, Any]


@dataclass(frozen=True)
class Run:
    """One training run of a table: ``settings`` are `RunConfig` fields (without ``output_dir``); ``train=False``
    evaluates the untrained model as the run would be evaluated (a table's reference row)."""

    id: str
    settings: dict[str, Any]
    labels: dict[str, Any] = field(default_factory=dict)
    train: bool = True
    trained_by: TrainedBy | None = None


@dataclass(frozen=True)
class TrainedBy:
    """The run of another table whose trained adapter a run evaluates (``scored_again``)."""

    table: str
    run: Run


# The settings a run scored again may change from the run that trained its adapter: how it is evaluated, never
# how it trains. ``quantize`` among them is the base the adapter is loaded on to be evaluated (an adapter trained
# on the 4-bit base, served on the full-precision one); the record's ``trained_by`` names the run, whose config
# says how the adapter trained.
EVALUATION_SETTINGS = frozenset({"max_eval_samples", "eval_batch_size", "num_beams", "length_penalty",
                                 "no_repeat_ngram_size", "max_new_tokens", "quantize"})


def scored_again(source: Run, table: str, run_id: str, evaluation: dict[str, Any]) -> Run:
    """The run ``run_id`` that evaluates the adapter ``source`` (a run of ``table``) trained, with ``evaluation``
    changed, instead of training the same adapter again; it trains ``source`` first, into ``table``'s run
    directory, if that has not run (while ``table``'s own grid trains the same run, the run directory's lock
    refuses the second process: that run fails, and trains or is read on the next pass)."""
    other = sorted(set(evaluation) - EVALUATION_SETTINGS)
    if other:
        raise ValueError(f"{run_id}: {', '.join(other)} would change how {source.id} trains, not how it is evaluated")
    return Run(run_id, {**source.settings, **evaluation}, source.labels, trained_by=TrainedBy(table, source))


# Method rows of the tables that are a method with options: kasa-auto is kasa with the automatic, spectrum-aware
# truncation (drop_rank "auto" at the library's default budget); a -4bit row trains on the NF4 base (issue 14).
VARIANTS = {"kasa-auto": {"method": "kasa", "drop_rank": "auto"},
            "kasa-auto-ones": {"method": "kasa", "drop_rank": "auto", "sigma_init": "ones"},
            "kasa-auto-4bit": {"method": "kasa", "drop_rank": "auto", "quantize": "4bit"},
            "lora-4bit": {"method": "lora", "quantize": "4bit"}}


# The paper's other baselines (issue 25) that need a setting of their own. VeRA's rank is the width of its frozen
# random projections, not a budget (its paper: 256 to 1024): 256 here. Every other added method trains with the
# table's r (the bottleneck size of the adapters, the prefix length, DyLoRA's largest rank).
BASELINE_SETTINGS = {"vera": {"method": "vera", "r": 256}}
# A method's own learning rate, as a factor on its table's rate, where the method's paper prescribes a very
# different one (VeRA's and prefix tuning's rates are about ten times LoRA's) and a recorded probe on one task and
# seed chose it (lr_sweep.py); every other method trains at its table's rate. A factor, not a
# rate, because the GLUE table's rate depends on the task. A table's summary names the methods found here.
# VeRA: 10, from lr_sweep.py's probe on MRPC, where 10 and 30 tie on the best dev accuracy (71.1, against 70.1 at 1)
# and 10 is the VeRA paper's ratio to LoRA's rate. Prefix tuning: 100, from the probe on commonsense, by the lowest
# mean training loss (4.66, 2.33, 1.15, 0.64 at 1, 10, 30, 100; LoRA's is 0.53 at 1); the probe stops at 100, a rate
# of 0.03, already at the top of the rates prefix tuning is trained at. (The E2E table's rate makes it 0.05 there.)
METHOD_LR_FACTOR: dict[str, float] = {"vera": 10.0, "prefix": 100.0}


def method_options(method: str) -> dict[str, Any]:
    """The settings that make a method row: its method and options (``VARIANTS``, ``BASELINE_SETTINGS``)."""
    return VARIANTS.get(method) or BASELINE_SETTINGS.get(method) or {"method": method}


def at_lr_factor(settings: dict[str, Any], factor: float) -> dict[str, Any]:
    """``settings`` with the adapter's learning rate times ``factor``; a classification head keeps its rate."""
    head = {"head_lr": settings.get("head_lr", settings["lr"])} if settings["task"].startswith("glue:") else {}
    return {**settings, "lr": settings["lr"] * factor, **head}


def with_method(settings: dict[str, Any], method: str) -> dict[str, Any]:
    """A table's ``settings`` for one of its method rows: the row's method and options, at the method's own
    learning rate (``METHOD_LR_FACTOR``) where it has one."""
    merged = {**settings, **method_options(method)}
    return at_lr_factor(merged, METHOD_LR_FACTOR[method]) if method in METHOD_LR_FACTOR else merged


def own_rates(methods: Sequence[str]) -> str:
    """For a summary: which of ``methods`` trained at a learning rate of their own, and at what factor."""
    named = [f"{m} at {METHOD_LR_FACTOR[m]:g}x" for m in methods if m in METHOD_LR_FACTOR]
    return ("Methods at their own learning rate, a factor on the table's (a recorded probe): "
            f"{', '.join(named)}. " if named else "")


def record_path(results: Path, table: str, run_id: str) -> Path:
    return results / table / "runs" / f"{run_id}.json"


def matches(settings: dict[str, Any], config: dict[str, Any]) -> bool:
    """Whether a run's resolved ``config`` has every one of ``settings``."""
    return all(key in config and config[key] == value for key, value in settings.items())


def finished(run: Run, results: Path, table: str) -> bool:
    path = record_path(results, table, run.id)
    return path.is_file() and matches(run.settings, json.loads(path.read_text())["run"]["config"])


def pending(runs: Sequence[Run], results: Path, table: str) -> list[Run]:
    """The runs without a record of their settings, in the given order (a finished run is never trained again)."""
    ids = [run.id for run in runs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"table {table!r} names runs more than once: {', '.join(duplicates)}")
    return [run for run in runs if not finished(run, results, table)]


def load_records(results: Path, table: str, runs: Sequence[Run]) -> list[Record]:
    """The records of ``runs`` that are finished with their settings (stale records are left out), in run order."""
    return [json.loads(record_path(results, table, run.id).read_text()) for run in runs
            if finished(run, results, table)]


def worker_command(run: Run, work: Path, record: Path, table: str, data_dir: Path) -> list[str]:
    """The subprocess that trains ``run`` on the data in ``data_dir`` into ``<work>/<table>/<id>`` and writes
    ``record``; a run scored again also gets the settings of the run that trains its adapter, in that run's own
    directory."""
    job = {"table": table, "id": run.id, "labels": run.labels, "record": str(record), "command": _command(),
           "train": run.train, "settings": _run_settings(run, work / table / run.id, data_dir)}
    if run.trained_by:
        source = run.trained_by
        job["trained_by"] = {"id": f"{source.table}/{source.run.id}",
                             "settings": _run_settings(source.run, work / source.table / source.run.id, data_dir)}
    return [sys.executable, str(WORKER), json.dumps(job)]


def _run_settings(run: Run, run_dir: Path, data_dir: Path) -> dict[str, Any]:
    """The settings of ``run`` in ``run_dir``, continuing an interrupted run of the same settings; a run directory
    that never started training, or holds other settings, is cleared."""
    started = run_dir / "output" / "run_config.json"
    resume = started.is_file() and matches(run.settings, json.loads(started.read_text()))
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)
    return {**run.settings, "data_dir": str(data_dir), "output_dir": str(run_dir / "output"), "resume": resume}


def execute(runs: Sequence[Run], table: str, results: Path, work: Path, jobs: int, threads: int,
            data_dir: Path = DATA) -> list[str]:
    """Train the pending runs of ``table``, ``jobs`` processes at a time; returns the ids of failed runs."""
    queue = pending(runs, results, table)
    print(f"{table}: {len(runs) - len(queue)} of {len(runs)} runs finished, {len(queue)} to train", flush=True)
    active: dict[str, tuple[subprocess.Popen, float]] = {}
    failed: list[str] = []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    while queue or active:
        while queue and len(active) < jobs:
            run = queue.pop(0)
            run_dir = work / table / run.id
            command = worker_command(run, work, record_path(results, table, run.id), table, data_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(run_dir / "log.txt", "a") as log:
                active[run.id] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env),
                                  time.perf_counter())
        time.sleep(1)
        for run_id, (process, started) in list(active.items()):
            if process.poll() is None:
                continue
            del active[run_id]
            status = "done" if process.returncode == 0 else f"FAILED (exit {process.returncode})"
            print(f"  {run_id}: {status} in {time.perf_counter() - started:.0f} s", flush=True)
            if process.returncode:
                failed.append(run_id)
    if failed:
        print(f"{table}: {len(failed)} runs failed; see {work / table}/<id>/log.txt: {', '.join(failed)}")
    return failed


def _command() -> str:
    """The table's command line, as recorded with each run."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else script
    return " ".join(["python", str(shown), *sys.argv[1:]])


def main(table: str, runs: Sequence[Run], summarise: Callable[[list[Record], Path], None],
         argv: Sequence[str] | None = None) -> int:
    """The command line of one table: train what is missing, then rewrite the summary from all records."""
    parser = argparse.ArgumentParser(description=f"Quality benchmark table '{table}' (resumable).")
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at the same time (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--data-dir", type=Path, default=DATA, help=f"the benchmark data (default {DATA})")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"records and summaries (default {RESULTS})")
    parser.add_argument("--work", type=Path, default=WORK, help=f"adapters and logs (default {WORK})")
    parser.add_argument("--summary-only", action="store_true", help="only rewrite the summary from the records")
    parser.add_argument("--list", action="store_true", help="print the runs still to train and exit")
    parser.add_argument("--only", nargs="+", metavar="PREFIX",
                        help="train only the runs whose id starts with one of these (e.g. mrpc-); the summary "
                             "still covers every finished run")
    args = parser.parse_args(argv)
    selected = [run for run in runs if not args.only or run.id.startswith(tuple(args.only))]
    if args.list:
        for run in pending(selected, args.results, table):
            print(run.id, json.dumps(run.settings))
        return 0
    failed = [] if args.summary_only else execute(selected, table, args.results, args.work, args.jobs, args.threads,
                                                          args.data_dir)
    records = load_records(args.results, table, runs)
    if records:
        summarise(records, args.results / table)
        print(f"{table}: summary of {len(records)} runs in {args.results / table}")
    return 1 if failed else 0
