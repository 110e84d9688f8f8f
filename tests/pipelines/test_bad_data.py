"""Bad training data is refused by `kasa-peft train` before anything is written: one line naming the file."""

from __future__ import annotations

import re

import pytest

from .helpers import write_classification_files

GOOD = "review,label\nthe movie was good,pos\nthe movie was bad,neg\n"


@pytest.mark.parametrize("train_text, eval_text, message", [
    ("review,label\n", GOOD, r"train\.csv holds no examples"),
    (GOOD, "review,label\n", r"eval\.csv holds no examples"),
    ("review,label\nthe movie was good,pos\nthe plot,pos\n", GOOD, r"train\.csv: column 'label' holds one class only"),
    ("review,label\nthe movie was good,pos\nthe plot,\nbad,neg\n", GOOD, r"train\.csv, record 2: 'label' is empty"),
    (GOOD.replace("good", "g\xe9nial"), GOOD, r"train\.csv is not UTF-8 text \(byte 0xe9"),
], ids=["header-only-train", "header-only-eval", "one-class", "empty-label", "latin-1"])
def test_bad_files_fail_before_training_naming_the_file(cli, bert_dir, tmp_path, train_text, eval_text, message):
    train_file, eval_file = write_classification_files(tmp_path)
    train_file.write_bytes(train_text.encode("latin-1"))
    eval_file.write_text(eval_text)
    out = tmp_path / "run"
    result = cli("train", "--task", "classify", "--model", bert_dir, "--output-dir", out, "--train-file", train_file,
                 "--eval-file", eval_file, "--text-columns", "review", "--label-column", "label", "--max-steps", 1)
    assert result.code == 1
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kasa-peft: error: "), result.err
    assert re.search(message, lines[0]), lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.csv", "train.csv"]  # no run directory, no lock
