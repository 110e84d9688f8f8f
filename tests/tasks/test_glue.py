import math
from pathlib import Path

import pytest

from kasa_peft.tasks.glue import GLUE_TASKS, glue_metrics, load_classification_file, load_glue

# Row counts from shared/data/SOURCES.md, header rows excluded.
SOURCES_ROWS = {
    ("cola", "train"): 8551, ("cola", "dev"): 1043,
    ("sst2", "train"): 67349, ("sst2", "dev"): 872,
    ("mrpc", "train"): 3668, ("mrpc", "dev"): 408,
    ("rte", "train"): 2490, ("rte", "dev"): 277,
    ("stsb", "train"): 5749, ("stsb", "dev"): 1500,
    ("qnli", "dev"): 5463,
}
DIR_TO_TASK = {task.dir_name: name for name, task in GLUE_TASKS.items()}


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


# --- real data ---------------------------------------------------------------------------


@pytest.mark.integration
def test_every_real_glue_file_has_its_documented_row_count(data_dir):
    present = {(DIR_TO_TASK[p.parent.name], p.stem) for p in (data_dir / "glue").glob("*/*.tsv")}
    assert present == set(SOURCES_ROWS)
    for task, split in sorted(present):
        examples = load_glue(task, data_dir, split)
        assert len(examples.texts_a) == len(examples.labels) == SOURCES_ROWS[task, split], (task, split)
        assert (examples.texts_b is None) == (task in ("cola", "sst2"))
        if examples.texts_b is not None:
            assert len(examples.texts_b) == len(examples.labels)


@pytest.mark.integration
def test_real_glue_rows_are_parsed_as_written(data_dir):
    cola_train = load_glue("cola", data_dir, "train")
    assert cola_train.texts_a[0] == "Our friends won't buy this analysis, let alone the next one we propose."
    cola_dev = load_glue("cola", data_dir, "dev")  # no final newline
    assert (cola_dev.texts_a[-1], cola_dev.labels[-1]) == ("John talked to Bill about himself.", 1)

    mrpc = load_glue("mrpc", data_dir, "dev")  # BOM, and an unbalanced quote that must stay
    assert mrpc.labels[:2] == [1, 0]
    assert mrpc.texts_b[0] == '"The foodservice pie business does not fit our long-term growth strategy.'

    assert load_glue("rte", data_dir, "dev").labels[:2] == [1, 0]  # not_entailment, entailment
    assert load_glue("qnli", data_dir, "dev").labels[:2] == [0, 1]  # entailment, not_entailment
    assert load_glue("stsb", data_dir, "dev").labels[:2] == [5.0, 4.75]

    sst2 = load_glue("sst2", data_dir, "train").labels
    assert (sst2.count(1), sst2.count(0)) == (37569, 29780)  # SOURCES.md label counts


# --- layouts (synthetic files) ------------------------------------------------------------


def test_cola_has_no_header_and_may_lack_the_final_newline(tmp_path):
    write(tmp_path / "glue/CoLA/dev.tsv", "gj04\t1\t\tThe cat sat.\ngj04\t0\t*\tCat the sat.")
    examples = load_glue("cola", tmp_path, "dev")
    assert examples.texts_a == ["The cat sat.", "Cat the sat."]
    assert examples.texts_b is None
    assert examples.labels == [1, 0]
    assert examples.label_names == ["unacceptable", "acceptable"]


def test_mrpc_bom_and_quotes(tmp_path):
    write(tmp_path / "glue/MRPC/train.tsv",
          "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1\t2\tHe said \"no.\tShe said \"yes\"\n",
          encoding="utf-8")
    examples = load_glue("mrpc", tmp_path, "train")
    assert (examples.texts_a, examples.texts_b, examples.labels) == (['He said "no.'], ['She said "yes"'], [0])


def test_stsb_score_is_a_float_regression_label(tmp_path):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    write(tmp_path / "glue/STS-B/dev.tsv", header + "0\tg\tf\ty\t0\tnone\tnone\tA b.\tC d.\t3.800\n")
    examples = load_glue("stsb", tmp_path, "dev")
    assert (examples.texts_a, examples.texts_b, examples.labels, examples.label_names) == (
        ["A b."], ["C d."], [3.8], None)


def test_mnli_uses_gold_label_and_its_two_dev_splits(tmp_path):
    header = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
              "sentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n")
    row = "0\t1\t1n\tfiction\t(x)\t(y)\t(X)\t(Y)\tPremise.\tHypothesis.\t{}\tneutral\tneutral\tneutral\tneutral\t{}\n"
    write(tmp_path / "glue/MNLI/dev_mismatched.tsv",
          header + row.format("contradiction", "contradiction") + row.format("neutral", "neutral"))
    examples = load_glue("mnli", tmp_path, "dev_mismatched")
    assert examples.labels == [2, 1]
    assert GLUE_TASKS["mnli"].eval_splits == ("dev_matched", "dev_mismatched")


def test_qqp_layout(tmp_path):
    write(tmp_path / "glue/QQP/dev.tsv",
          "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n1\t2\t3\tWhy?\tHow come?\t1\n")
    examples = load_glue("qqp", tmp_path, "dev")
    assert (examples.texts_a, examples.texts_b, examples.labels) == (["Why?"], ["How come?"], [1])


def test_task_table():
    assert [(t.num_labels, t.is_regression) for t in (GLUE_TASKS["stsb"], GLUE_TASKS["mnli"], GLUE_TASKS["rte"])] == [
        (1, True), (3, False), (2, False)]
    assert {name: task.main_metric for name, task in GLUE_TASKS.items()} == {
        "cola": "matthews_correlation", "sst2": "accuracy", "mrpc": "accuracy", "rte": "accuracy",
        "stsb": "pearson", "qnli": "accuracy", "mnli": "accuracy", "qqp": "accuracy"}


# --- errors -------------------------------------------------------------------------------


def test_missing_file_names_it_and_the_expected_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"glue/QNLI/train\.tsv not found: pass --data-dir"):
        load_glue("qnli", tmp_path, "train")


def test_unknown_task_and_split_list_the_options(tmp_path):
    with pytest.raises(ValueError, match="'wnli'.*cola, sst2"):
        load_glue("wnli", tmp_path, "dev")
    with pytest.raises(ValueError, match="'test'.*train, dev_matched, dev_mismatched"):
        load_glue("mnli", tmp_path, "test")


def test_malformed_row_and_unknown_label_are_reported(tmp_path):
    write(tmp_path / "glue/RTE/dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\n")
    with pytest.raises(ValueError, match="row 1: expected 4 tab-separated fields, found 3"):
        load_glue("rte", tmp_path, "dev")
    write(tmp_path / "glue/RTE/dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tneutral\n")
    with pytest.raises(ValueError, match="label 'neutral' is not one of 'entailment', 'not_entailment'"):
        load_glue("rte", tmp_path, "dev")


# --- metrics against hand-worked values ---------------------------------------------------

LABELS = [1, 1, 1, 0, 0, 1, 0, 1]
PREDS = [1, 0, 1, 0, 1, 1, 0, 1]  # TP=4 (0,2,5,7), FN=1 (1), TN=2 (3,6), FP=1 (4)


def test_cola_matthews_correlation():
    tp, tn, fp, fn = 4, 2, 1, 1
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))  # 7/15
    assert glue_metrics("cola", PREDS, LABELS) == pytest.approx({"matthews_correlation": expected})


def test_mrpc_and_qqp_accuracy_f1_and_their_mean():
    accuracy, f1 = 6 / 8, 2 * 4 / (2 * 4 + 1 + 1)
    expected = {"accuracy": accuracy, "f1": f1, "combined": (accuracy + f1) / 2}
    assert glue_metrics("mrpc", PREDS, LABELS) == pytest.approx(expected)
    assert glue_metrics("qqp", PREDS, LABELS) == pytest.approx(expected)


def test_accuracy_tasks():
    for task in ("sst2", "qnli", "rte"):
        assert glue_metrics(task, PREDS, LABELS) == {"accuracy": 0.75}
    assert glue_metrics("mnli", [0, 1, 2, 2], [0, 1, 1, 2]) == {"accuracy": 0.75}


def test_stsb_pearson_and_spearman():
    # x deviations (-3, -2, -1, 6), y deviations (-1.5, .5, -.5, 1.5): cov 13, sums of squares 50 and 5.
    # The ranks of x are (1, 2, 3, 4): their deviations times y's give 4 over sqrt(5 * 5).
    scores = glue_metrics("stsb", [1.0, 2.0, 3.0, 10.0], [1.0, 3.0, 2.0, 4.0])
    assert scores == pytest.approx({"pearson": 13 / math.sqrt(50 * 5), "spearman": 4 / 5})


def test_metrics_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="3 predictions for 2 references"):
        glue_metrics("sst2", [0, 1, 1], [0, 1])


# --- user files ---------------------------------------------------------------------------


def test_csv_pair_with_string_labels_sorted(tmp_path):
    path = write(tmp_path / "train.csv", 'premise,hypothesis,verdict\n"A, b",C,yes\nD,"E ""f""",no\nG,H,yes\n')
    examples = load_classification_file(path, ["premise", "hypothesis"], "verdict")
    assert examples.texts_a == ["A, b", "D", "G"]
    assert examples.texts_b == ["C", 'E "f"', "H"]
    assert examples.label_names == ["no", "yes"]
    assert examples.labels == [1, 0, 1]


def test_tsv_and_jsonl_with_given_label_names(tmp_path):
    tsv = write(tmp_path / "dev.tsv", "text\tlabel\nfine\tpos\nbad\tneg\n")
    examples = load_classification_file(tsv, ["text"], "label", label_names=["pos", "neg"])
    assert (examples.texts_a, examples.texts_b, examples.labels) == (["fine", "bad"], None, [0, 1])

    jsonl = write(tmp_path / "train.jsonl", '{"text": "x", "label": 2}\n\n{"text": "y", "label": 10}\n')
    examples = load_classification_file(jsonl, ["text"], "label")
    assert (examples.label_names, examples.labels) == (["2", "10"], [0, 1])  # integers sort numerically


def test_user_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv not found"):
        load_classification_file(tmp_path / "nope.csv", ["text"], "label")
    path = write(tmp_path / "d.csv", "text,label\nx,pos\n")
    with pytest.raises(ValueError, match="no column 'sentence'; available columns: 'text', 'label'"):
        load_classification_file(path, ["sentence"], "label")
    with pytest.raises(ValueError, match="label 'pos' is not one of 'negative', 'positive'"):
        load_classification_file(path, ["text"], "label", label_names=["negative", "positive"])
    with pytest.raises(ValueError, match="1 or 2 columns"):
        load_classification_file(path, ["text", "text", "text"], "label")
    with pytest.raises(ValueError, match="unsupported file type '.parquet'"):
        load_classification_file(write(tmp_path / "d.parquet", ""), ["text"], "label")
    short_row = write(tmp_path / "e.csv", "text,label\nx\n")
    with pytest.raises(ValueError, match="record 1: expected 2 fields"):
        load_classification_file(short_row, ["text"], "label")
    uneven = write(tmp_path / "f.jsonl", '{"text": "x", "label": 1}\n{"text": "y"}\n')
    with pytest.raises(ValueError, match="record 2: no column 'label'"):
        load_classification_file(uneven, ["text"], "label")


# --- data that must be refused before training, naming the file ---------------------------


@pytest.mark.parametrize("content, message", [
    ("text,label\n", r"train\.csv holds no examples \(it is empty or has a header row only\)"),
    ("", r"train\.csv holds no examples"),
    ("text,label\nx,pos\ny,\nz,neg\n", r"train\.csv, record 2: 'label' is empty"),
    ("text,label\nx,pos\n,\nz,neg\n", r"train\.csv, record 2: 'text', 'label' is empty"),
    ("text,label\nx,pos\ny,  \n", r"train\.csv, record 2: 'label' is empty"),
    ("text,label\nx,pos\ny,pos\n", r"train\.csv: column 'label' holds one class only \('pos'\)"),
    (b"text,label\ncaf\xe9,pos\nx,neg\n", r"train\.csv is not UTF-8 text \(byte 0xe9 at byte 14\)"),
], ids=["header-only", "empty", "empty-label", "empty-row", "blank-label", "one-class", "latin-1"])
def test_user_file_data_problems_are_named(tmp_path, content, message):
    path = tmp_path / "train.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=message):
        load_classification_file(path, ["text"], "label")


def test_blank_lines_are_skipped(tmp_path):
    path = write(tmp_path / "train.csv", "text,label\nx,pos\n\n\ny,neg\n")
    assert load_classification_file(path, ["text"], "label").labels == [1, 0]


def test_jsonl_null_label_is_named(tmp_path):
    path = write(tmp_path / "train.jsonl", '{"text": "x", "label": "a"}\n{"text": "y", "label": null}\n')
    with pytest.raises(ValueError, match=r"train\.jsonl, record 2: 'label' is empty"):
        load_classification_file(path, ["text"], "label")


STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"


@pytest.mark.parametrize("score", ["nan", "inf", "-inf", "", "high"])
def test_stsb_scores_must_be_finite_numbers(tmp_path, score):
    write(tmp_path / "glue/STS-B/train.tsv", STSB_HEADER + "0\tg\tf\ty\t0\tn\tn\tA.\tB.\t1.0\n"
          f"1\tg\tf\ty\t0\tn\tn\tC.\tD.\t{score}\n")
    with pytest.raises(ValueError, match=rf"train\.tsv, record 2: score '{score}' is not a finite number"):
        load_glue("stsb", tmp_path, "train")


def test_glue_header_only_and_non_utf8_files_are_named(tmp_path):
    path = write(tmp_path / "glue/RTE/dev.tsv", "index\tsentence1\tsentence2\tlabel\n")
    with pytest.raises(ValueError, match=r"RTE/dev\.tsv holds no examples"):
        load_glue("rte", tmp_path, "dev")
    path.write_bytes(b"index\tsentence1\tsentence2\tlabel\n0\tcaf\xe9\tb\tentailment\n")
    with pytest.raises(ValueError, match=r"RTE/dev\.tsv is not UTF-8 text \(byte 0xe9"):
        load_glue("rte", tmp_path, "dev")
