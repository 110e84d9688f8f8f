"""End-to-end classification runs through the CLI on a tiny random BERT: GLUE (real rows) and user CSV files.

Every metric in metrics.json is recomputed here from the written predictions file and gold labels read
independently from the data file, with scikit-learn / scipy.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from .helpers import write_classification_files

R, HIDDEN, LAYERS = 8, 32, 2


def kasa_trainable(num_labels: int) -> int:
    """query and value in each layer: r (in + out) + r each, plus the new head (hidden x labels + labels)."""
    return 2 * LAYERS * (R * 2 * HIDDEN + R) + HIDDEN * num_labels + num_labels


def tsv_column(path: Path, column: int, header: bool = True) -> list[str]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [row[column] for row in rows[1 if header else 0:] if row]


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def train_args(task: str, model: str, out: Path, *extra) -> list:
    return ["train", "--task", task, "--model", model, "--output-dir", out, "--max-steps", 3, "--batch-size", 8,
            "--max-train-samples", 24, "--max-length", 64, *extra]


def test_glue_cola_records_every_evaluation_best_and_final(cli, bert_dir, data_dir, tmp_path):
    out = tmp_path / "cola"
    result = cli(*train_args("glue:cola", bert_dir, out, "--data-dir", data_dir, "--eval-steps", 2))
    assert result.code == 0, result.err
    record = json.loads((out / "metrics.json").read_text())
    assert [e["step"] for e in record["evaluations"]] == [2, 3]  # every 2 steps, then the end of training
    scores = [e["metrics"]["matthews_correlation"] for e in record["evaluations"]]
    assert record["best"]["metrics"]["matthews_correlation"] == max(scores)
    assert record["final"] == record["evaluations"][-1]
    assert record["trainable_parameters"] == kasa_trainable(2)
    assert record["config"]["target_modules"] == ["query", "value"] and record["config"]["r"] == R
    assert set(record["versions"]) >= {"torch", "transformers", "peft", "kasa-peft"}

    names = ["unacceptable", "acceptable"]
    predictions = [names.index(p) for p in read_lines(out / "predictions_dev.txt")]
    golds = [int(label) for label in tsv_column(data_dir / "glue/CoLA/dev.tsv", 1, header=False)]
    assert len(predictions) == len(golds) == 1043
    assert record["final"]["metrics"]["matthews_correlation"] == pytest.approx(matthews_corrcoef(golds, predictions))
    assert "matthews_correlation" in result.out and str(out) in result.out

    again = cli("eval", "--run", out)  # the saved adapter reproduces the final evaluation
    assert again.code == 0, again.err
    assert json.loads(again.out) == pytest.approx(record["final"]["metrics"])


def test_glue_stsb_is_a_regression(cli, bert_dir, data_dir, tmp_path):
    out = tmp_path / "stsb"
    result = cli(*train_args("glue:stsb", bert_dir, out, "--data-dir", data_dir))
    assert result.code == 0, result.err
    record = json.loads((out / "metrics.json").read_text())
    assert record["trainable_parameters"] == kasa_trainable(1)
    predictions = [float(p) for p in read_lines(out / "predictions_dev.txt")]
    golds = [float(score) for score in tsv_column(data_dir / "glue/STS-B/dev.tsv", 9)]
    assert len(set(predictions)) > 1
    metrics = record["final"]["metrics"]
    assert metrics["pearson"] == pytest.approx(pearsonr(predictions, golds)[0], abs=1e-5)
    assert metrics["spearman"] == pytest.approx(spearmanr(predictions, golds)[0], abs=1e-5)


def test_glue_mrpc_reports_accuracy_and_f1(cli, bert_dir, data_dir, tmp_path):
    out = tmp_path / "mrpc"
    assert cli(*train_args("glue:mrpc", bert_dir, out, "--data-dir", data_dir)).code == 0
    metrics = json.loads((out / "metrics.json").read_text())["final"]["metrics"]
    predictions = [["not_equivalent", "equivalent"].index(p) for p in read_lines(out / "predictions_dev.txt")]
    golds = [int(label) for label in tsv_column(data_dir / "glue/MRPC/dev.tsv", 0)]
    assert metrics["accuracy"] == pytest.approx(accuracy_score(golds, predictions))
    assert metrics["f1"] == pytest.approx(f1_score(golds, predictions))


def test_classify_user_csv(cli, bert_dir, tmp_path):
    train_file, eval_file = write_classification_files(tmp_path)
    out = tmp_path / "run"
    result = cli(*train_args("classify", bert_dir, out, "--train-file", train_file, "--eval-file", eval_file,
                             "--text-columns", "review", "--label-column", "label", "--head-lr", 1e-2))
    assert result.code == 0, result.err
    record = json.loads((out / "metrics.json").read_text())
    assert record["label_names"] == ["neg", "neutral", "pos"] and record["trainable_parameters"] == kasa_trainable(3)
    predictions = read_lines(out / "predictions_eval.txt")
    golds = [row["label"] for row in csv.DictReader(eval_file.open())]
    assert record["final"]["metrics"] == pytest.approx({"accuracy": accuracy_score(golds, predictions),
                                                        "macro_f1": f1_score(golds, predictions, average="macro")})


def test_mnli_scores_matched_and_mismatched_dev_sets(cli, bert_dir, tmp_path):
    """MNLI files are not in the shared data: a few synthetic rows in GLUE's layout."""
    glue = tmp_path / "glue" / "MNLI"
    glue.mkdir(parents=True)
    labels = ["entailment", "neutral", "contradiction"]
    for split, rows in (("train", 12), ("dev_matched", 6), ("dev_mismatched", 5)):
        lines = ["sentence1\tsentence2\tgold_label"] + [f"the plot {i}\tthe movie {i % 2}\t{labels[i % 3]}"
                                                         for i in range(rows)]
        (glue / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "mnli"
    result = cli(*train_args("glue:mnli", bert_dir, out, "--data-dir", tmp_path))
    assert result.code == 0, result.err
    record = json.loads((out / "metrics.json").read_text())
    assert record["main_metric"] == "dev_matched/accuracy"
    for split in ("dev_matched", "dev_mismatched"):
        predictions = read_lines(out / f"predictions_{split}.txt")
        golds = tsv_column(glue / f"{split}.tsv", 2)
        assert record["final"]["metrics"][f"{split}/accuracy"] == pytest.approx(accuracy_score(golds, predictions))
