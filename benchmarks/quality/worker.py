"""Train one benchmark run in this (fresh) process and write its record: ``worker.py '<job json>'``.

The job (written by ``harness.worker_command``) holds the table, the run's id and labels, the `RunConfig`
settings and where the record goes. The record is written only once training and evaluation have finished,
through a temporary file and a rename, so a record on disk is always a finished run; its paths are relative to
the repository. A run's answers (``e2e_predictions.txt``, ``commonsense_predictions.jsonl``,
``ifeval_generations.jsonl``, ``sft_generations.jsonl``) are kept beside the record, as ``<id>.predictions.txt`` /
``.predictions.jsonl`` / ``.ifeval.jsonl`` / ``.sft.jsonl``, so that its scores can be recomputed when a metric is
corrected and methods compared example by example. A job with ``"train": false`` evaluates the untrained model;
one with ``"trained_by"`` evaluates the adapter another table's run trained (``harness.scored_again``).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from time import perf_counter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for common.py

from common import machine_info, repository_relative  # noqa: E402
from kasa_peft.pipelines.base import write_atomically  # noqa: E402
from kasa_peft.pipelines.config import RunConfig, resolve_config  # noqa: E402
from kasa_peft.pipelines import commonsense, e2e, ifeval, sft  # noqa: E402
from kasa_peft.pipelines.base import best_device  # noqa: E402
from kasa_peft.pipelines.provenance import source_revision  # noqa: E402
from kasa_peft.pipelines.registry import build_pipeline  # noqa: E402
from kasa_peft.pipelines.run import evaluate, train, versions  # noqa: E402
from kasa_peft.pipelines.run_dir import METRICS_FILE, read_run  # noqa: E402

# a run's answer files and the suffix of their copies beside its record
ANSWER_FILES = {e2e.PREDICTIONS_FILE: ".predictions.txt", commonsense.PREDICTIONS_FILE: ".predictions.jsonl",
                ifeval.GENERATIONS_FILE: ".ifeval.jsonl", sft.GENERATIONS_FILE: ".sft.jsonl"}


def run_job(job: dict) -> dict:
    """Train (or, when its ``metrics.json`` already exists, just read) the run and return its record; a job with
    ``train`` false evaluates the untrained model instead (its record has the config and the ``final`` metrics),
    and one ``trained_by`` another run evaluates that run's adapter (``scored_again``)."""
    config = resolve_config({}, job["settings"])  # the task's defaults under the table's settings, as the CLI does
    output = Path(config.output_dir)
    if "trained_by" in job:
        run = scored_again(config, job["trained_by"])
    elif not job.get("train", True):
        output.mkdir(parents=True, exist_ok=True)
        pipeline = build_pipeline(config)
        metrics, seconds = timed_evaluation(config, None, output)
        run = {"task": config.task, "method": None, "model": config.model, "main_metric": pipeline.main_metric,
               "final": {"metrics": metrics}, "trained": False, "evaluation_wall_time_seconds": seconds,
               "versions": versions(), "device": str(best_device()), "source": source_revision(),
               "evaluation": pipeline.evaluation_switches(), "config": config.to_dict()}
    else:
        run = trained(config)
    return {"table": job["table"], "id": job["id"], "labels": job["labels"], "command": job["command"], "run": run,
            "machine": machine_info(), "output_dir": str(output)}


def timed_evaluation(config: RunConfig, adapter: str | None, output: Path) -> tuple[dict, float]:
    """``evaluate``'s metrics and the seconds it took."""
    start = perf_counter()
    metrics = evaluate(config, adapter, output)
    return metrics, perf_counter() - start


def trained(config: RunConfig) -> dict:
    """The record of the run ``config`` trains, read if it has finished."""
    output = Path(config.output_dir)
    return read_run(output) if (output / METRICS_FILE).is_file() else train(config).record


def scored_again(config: RunConfig, source: dict) -> dict:
    """The record of ``source``'s trained adapter (trained first if it has not run) evaluated with ``config``:
    the source's training record, with this evaluation as its only one, this config and evaluation switches, and
    ``trained_by`` naming the source and the code that trained it (``source`` is the code that evaluated);
    ``wall_time_seconds`` stays the training's, ``evaluation_wall_time_seconds`` is this evaluation's."""
    record = trained(resolve_config({}, source["settings"]))
    if len(record["evaluations"]) != 1:
        raise ValueError(f"{source['id']} chose its adapter among {len(record['evaluations'])} evaluations: scoring "
                         "it again with other settings could have chosen another")
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    metrics, seconds = timed_evaluation(config, source["settings"]["output_dir"], output)
    evaluation = {**record["final"], "metrics": metrics}
    return {**record, "best": evaluation, "final": evaluation, "evaluations": [evaluation],
            "evaluation_wall_time_seconds": seconds,
            "trained_by": {"run": source["id"], "source": record.get("source")}, "versions": versions(),
            "device": str(best_device()), "source": source_revision(),
            "evaluation": build_pipeline(config).evaluation_switches(), "config": config.to_dict()}


def main() -> None:
    job = json.loads(sys.argv[1])
    record = run_job(job)
    for name, suffix in ANSWER_FILES.items():
        answers = Path(record["output_dir"]) / name
        if answers.is_file():
            Path(job["record"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(answers, Path(job["record"]).with_suffix(suffix))
    write_atomically(Path(job["record"]), json.dumps(repository_relative(record), indent=2) + "\n")


if __name__ == "__main__":
    main()
