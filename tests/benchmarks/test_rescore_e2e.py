"""benchmarks/quality/rescore_e2e.py: a run's NIST recomputed from its kept predictions, on a hand-worked case."""

from __future__ import annotations

import json
import math

from quality import e2e, rescore_e2e
from quality.harness import record_path

from kasa_peft.pipelines.config import RunConfig

MACHINE = {"date": "2025-01-01 00:00:00", "cpu": "x", "cores": 2, "torch_threads": 1, "python": "3.11",
           "versions": {"torch": "2"}}


def test_nist_of_a_kept_run_is_rescored_with_the_mteval_reference_length(tmp_path):
    data = tmp_path / "data" / "e2e"
    data.mkdir(parents=True)
    (data / "train.csv").write_text('mr,ref\n"name[X]",x y\n')
    (data / "test.csv").write_text('mr,ref\n"name[A]",a b\n"name[A]",a b\n"name[C]",c d\n')
    output = tmp_path / "work" / "output"
    output.mkdir(parents=True)
    (output / "e2e_predictions.txt").write_text("a\nc\n")
    config = RunConfig(**{**e2e.SETTINGS, "method": "kasa", "seed": 0, "output_dir": str(output)}).to_dict()
    old = {"BLEU": 0.5, "NIST": 9.9, "METEOR": 0.3, "ROUGE_L": 0.4, "CIDEr": 1.0}
    evaluation = {"step": 100, "epoch": 1.0, "metrics": old}
    record = {"table": "e2e", "id": "e2e-kasa-s0", "labels": {"method": "kasa", "seed": 0, "metric": "all"},
              "command": "python benchmarks/quality/e2e.py", "machine": MACHINE, "output_dir": str(output),
              "run": {"main_metric": "BLEU", "best": evaluation, "final": evaluation, "evaluations": [evaluation],
                      "device": "cpu", "config": config}}
    results = tmp_path / "results"
    path = record_path(results, "e2e", "e2e-kasa-s0")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))

    assert rescore_e2e.main(["--results", str(results), "--data-dir", str(tmp_path / "data")]) == 0

    rescored = json.loads(path.read_text())["run"]
    # mteval: 6 reference words over 3 references / 2 MRs -> 4 words per MR against 2 candidate words: ratio 1/2;
    # info(a) = log2(6/2), info(c) = log2(6/1). BLEU: both unigrams match, closest reference lengths 2 + 2 vs 2.
    beta = -math.log(0.5) / math.log(1.5) ** 2
    nist = math.exp(-beta * math.log(1 / 2) ** 2) * (math.log2(3) + math.log2(6)) / 2
    for evaluation in (rescored["final"], rescored["best"], rescored["evaluations"][0]):
        assert evaluation["metrics"]["NIST"] == nist
        assert math.isclose(evaluation["metrics"]["BLEU"], math.exp(1 - 4 / 2))
        assert evaluation["metrics"]["METEOR"] == old["METEOR"]
    assert path.with_suffix(".predictions.txt").read_text() == "a\nc\n"
    assert "| kasa | **36.79** | **0.28** |" in (results / "e2e" / "summary.md").read_text()
    assert "NIST of" not in (results / "e2e" / "summary.md").read_text()


def test_the_summary_leaves_out_the_nist_of_runs_without_predictions(tmp_path):
    def record(run_id: str, nist: float) -> dict:
        metrics = {"BLEU": 0.5, "NIST": nist, "METEOR": 0.3, "ROUGE_L": 0.4, "CIDEr": 1.0}
        evaluation = {"step": 100, "epoch": 1.0, "metrics": metrics}
        return {"table": "e2e", "id": run_id, "labels": {"method": "lora", "seed": int(run_id[-1]), "metric": "all"},
                "machine": MACHINE, "run": {"best": evaluation, "final": evaluation, "device": "cpu"}}

    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "e2e-lora-s1.predictions.txt").write_text("a\n")  # kept: its NIST is the fixed scorer's
    e2e.summarise([record("e2e-lora-s0", 7.0), record("e2e-lora-s1", 3.0)], tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert "| lora | **50.00 ± 0.00** | **3.00** |" in summary  # NIST of s1 alone, not the mean with 7.0
    assert "NIST of e2e-lora-s0 is left out" in summary
