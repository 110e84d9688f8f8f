"""Rescore BLEU and NIST of the E2E table's runs from their kept predictions (after a metric fix, e.g. issue 16's
NIST reference length), then rewrite the summary.

    python benchmarks/quality/rescore_e2e.py [--results DIR] [--data-dir DIR]

A run's predictions are ``runs/<id>.predictions.txt`` beside its record or, failing that, ``e2e_predictions.txt``
in the run's ``output_dir`` (then copied beside the record). The references are the run's own fixed test MRs,
rebuilt from the data with the run's settings. Only the final evaluation writes the predictions file, so it is the
one rescored, with ``best`` and the entry of ``evaluations`` that are the same evaluation. METEOR, ROUGE-L and
CIDEr are left as recorded (they need Java and did not change). Runs without predictions are listed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `quality`

from kasa_peft.pipelines.base import write_atomically  # noqa: E402
from kasa_peft.pipelines.config import resolve_config  # noqa: E402
from kasa_peft.pipelines.e2e import PREDICTIONS_FILE, e2e_pipeline  # noqa: E402
from kasa_peft.tasks.e2e import mteval_scores, read_predictions  # noqa: E402
from quality import e2e  # noqa: E402
from quality.harness import DATA, REPO, RESULTS, Record, load_records  # noqa: E402


def kept_predictions(record_file: Path, record: Record) -> Path | None:
    """The run's predictions beside its record (copied there from its output directory when only there)."""
    kept = record_file.with_suffix(".predictions.txt")
    if not kept.is_file():
        written = REPO / record.get("output_dir", "") / PREDICTIONS_FILE  # recorded relative to the repository
        if not written.is_file():
            return None
        shutil.copyfile(written, kept)
    return kept


def rescored(record: Record, scores: dict[str, float]) -> Record:
    """``record`` with ``scores`` replacing its final evaluation's values (and those of the same evaluation in
    ``best`` and ``evaluations``)."""
    run = record["run"]
    step = run["final"]["step"]

    def update(evaluation: dict[str, Any]) -> dict[str, Any]:
        if evaluation.get("step") != step:
            return evaluation
        return {**evaluation, "metrics": {**evaluation["metrics"], **scores}}
    run = {**run, "final": update(run["final"]), "best": update(run["best"]),
           "evaluations": [update(e) for e in run["evaluations"]]}
    return {**record, "run": run}


def references_of(record: Record, data_dir: Path) -> list[list[str]]:
    """The grouped references the run was scored against (its data settings decide them; a setting an older record
    left null takes the task's default, which only decoding reads)."""
    recorded = {key: value for key, value in record["run"]["config"].items() if value is not None}
    return e2e_pipeline(resolve_config({}, {**recorded, "data_dir": str(data_dir), "resume": False})).references


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"records and summaries (default {RESULTS})")
    parser.add_argument("--data-dir", type=Path, default=DATA, help=f"the benchmark data (default {DATA})")
    args = parser.parse_args(argv)
    missing = []
    for record_file in sorted((args.results / e2e.TABLE / "runs").glob("*.json")):
        record = json.loads(record_file.read_text())
        predictions = kept_predictions(record_file, record)
        if predictions is None:
            missing.append(record["id"])
            continue
        scores = mteval_scores(read_predictions(predictions), references_of(record, args.data_dir))
        before = record["run"]["final"]["metrics"]
        print(f"{record['id']}: BLEU {before['BLEU']:.4f} -> {scores['BLEU']:.4f}, "
              f"NIST {before['NIST']:.4f} -> {scores['NIST']:.4f}")
        write_atomically(record_file, json.dumps(rescored(record, scores), indent=2) + "\n")
    if missing:
        print(f"no predictions kept, not rescored: {', '.join(missing)}")
    records = load_records(args.results, e2e.TABLE, e2e.runs())
    if records:
        e2e.summarise(records, args.results / e2e.TABLE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
