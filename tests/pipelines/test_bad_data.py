"""Bad training data is refused by `kasa-peft train` before anything is written: one line naming the file."""

from __future__ import annotations

import json
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
    ("review,label,label\nthe movie was good,pos,neg\nthe movie was bad,neg,pos\n", GOOD,
     r"train\.csv: column 'label' appears more than once in the header"),
    (GOOD + '"a stray quote,pos\nthe plot was "fine",neutral\nbad,neg\n', GOOD,
     r"train\.csv, line 4: .* check its quotes"),
    (GOOD + '"a stray quote never closed,pos\n' + "the movie was fine,neutral\n" * 50, GOOD,
     r"train\.csv, line 4: unexpected end of data .*a quote opened and never closed"),
], ids=["header-only-train", "header-only-eval", "one-class", "empty-label", "latin-1", "duplicate-column",
        "stray-quote-closed-later", "stray-quote-never-closed"])
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


def test_a_long_csv_cell_is_read_like_the_same_text_in_jsonl(tmp_path):
    """The csv module refuses cells over 128 KiB by default; JSONL has no such limit, and neither has our CSV."""
    from kasa_peft.tasks.glue import load_classification_file

    long_text = "word " * 80_000  # 400k characters
    (tmp_path / "long.csv").write_text(f"review,label\n\"{long_text}\",pos\nshort,neg\n")
    (tmp_path / "long.jsonl").write_text(json.dumps({"review": long_text, "label": "pos"}) + "\n"
                                         + json.dumps({"review": "short", "label": "neg"}) + "\n")
    from_csv, from_jsonl = (load_classification_file(tmp_path / f"long.{kind}", ["review"], "label")
                            for kind in ("csv", "jsonl"))
    assert from_csv == from_jsonl and from_csv.texts_a[0] == long_text


@pytest.mark.parametrize("name, text, message", [
    ("train.jsonl", '{"review": "good", "label": "pos", "label": "neg"}\n{"review": "bad", "label": "neg"}\n',
     r"train\.jsonl, line 1: field 'label' appears more than once"),
    ("train.tsv", "review\tlabel\tlabel\ngood\tpos\tneg\nbad\tneg\tpos\n",
     r"train\.tsv: column 'label' appears more than once"),
])
def test_repeated_fields_are_refused_in_every_format(tmp_path, name, text, message):
    from kasa_peft.tasks.glue import load_classification_file

    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        load_classification_file(tmp_path / name, ["review"], "label")


def test_a_glue_tsv_with_a_repeated_column_is_refused(tmp_path):
    from kasa_peft.tasks.glue import load_glue

    (tmp_path / "glue" / "SST-2").mkdir(parents=True)
    (tmp_path / "glue" / "SST-2" / "train.tsv").write_text("sentence\tlabel\tlabel\ngood\t1\t0\nbad\t0\t1\n")
    with pytest.raises(ValueError, match=r"train\.tsv: column 'label' appears more than once"):
        load_glue("sst2", tmp_path, "train")


@pytest.mark.parametrize("record, field", [({"prompt": "2 + 2 =", "completion": 4}, "completion"),
                                           ({"prompt": ["2 + 2 ="], "completion": "4"}, "prompt"),
                                           ({"instruction": "add", "input": 2, "output": "4"}, "input"),
                                           ({"instruction": "add", "output": None}, "output")])
def test_an_sft_record_that_is_not_text_is_named_before_training(cli, llama_dir, tmp_path, record, field):
    train_file = tmp_path / "train.jsonl"
    train_file.write_text(json.dumps({"prompt": "1 + 1 =", "completion": "2"}) + "\n" + json.dumps(record) + "\n")
    result = cli("train", "--task", "sft", "--model", llama_dir, "--output-dir", tmp_path / "run", "--train-file",
                 train_file, "--eval-file", train_file, "--max-steps", 1)
    assert result.code == 1
    lines = result.err.strip().splitlines()
    assert re.fullmatch(rf"kasa-peft: error: .*train\.jsonl, record 2: field '{field}' is .*, expected text .*",
                        lines[-1]), result.err
    assert not lines[-1].startswith("Traceback") and "Traceback" not in result.err
    assert not (tmp_path / "run").exists()
