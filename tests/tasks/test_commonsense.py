import json

import pytest

from kasa_peft.tasks.commonsense import (
    COMMONSENSE_SETS,
    accuracy,
    answer_options,
    answer_target,
    available_train_sets,
    extract_answer,
    format_prompt,
    gold_option,
    load_commonsense,
)

# Record counts from shared/data/SOURCES.md.
TEST_RECORDS = {"boolq": 3270, "piqa": 1838, "social_i_qa": 1954, "hellaswag": 10042, "winogrande": 1267,
                "ARC-Easy": 2376, "ARC-Challenge": 1172, "openbookqa": 500}
TRAIN_RECORDS = {"boolq": 9427, "ARC-Easy": 2251, "ARC-Challenge": 1119, "openbookqa": 4957}

ARC_ITEM = {
    "instruction": "Please choose the correct answer to the question: Which is a gas?\n\n"
                   "Answer1: ice Answer2: steam Answer3: rock\n\nAnswer format: answer1/answer2/answer3",
    "input": "",
    "output": "the correct answer is answer2",
    "answer": "answer2",
}


@pytest.mark.integration
def test_real_sets_have_the_documented_sizes_and_consistent_answers(data_dir):
    assert available_train_sets(data_dir) == list(TRAIN_RECORDS)
    for split, sizes in (("test", TEST_RECORDS), ("train", TRAIN_RECORDS)):
        for name, size in sizes.items():
            records = load_commonsense(name, data_dir, split)
            assert len(records) == size, (name, split)
            for record in records:
                options = answer_options(name, record)
                assert options[gold_option(name, record)] == record["answer"]
                assert answer_target(record["answer"]) == record["output"]
                assert extract_answer(name, record["output"]) == record["answer"]


@pytest.mark.integration
def test_arc_items_have_three_to_five_options(data_dir):
    counts = {len(answer_options("ARC-Challenge", r)) for r in load_commonsense("ARC-Challenge", data_dir)}
    assert counts == {3, 4, 5}


def test_format_prompt_is_the_alpaca_template():
    assert format_prompt(ARC_ITEM) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\n" + ARC_ITEM["instruction"] + "\n\n### Response:\n")


def test_answer_options_follow_the_answer_format_line():
    assert answer_options("ARC-Easy", ARC_ITEM) == ["answer1", "answer2", "answer3"]
    assert gold_option("ARC-Easy", ARC_ITEM) == 1
    boolq = {"instruction": "Please answer ... true or false, question: is it?\n\nAnswer format: true/false",
             "answer": "false"}
    assert (answer_options("boolq", boolq), gold_option("boolq", boolq)) == (["true", "false"], 1)


def test_answer_options_reject_foreign_options_and_missing_format():
    with pytest.raises(ValueError, match="unexpected answer option"):
        answer_options("piqa", ARC_ITEM)
    with pytest.raises(ValueError, match="Answer format"):
        answer_options("boolq", {"instruction": "Is it?"})
    with pytest.raises(ValueError, match="'answer9' is not among the options"):
        gold_option("ARC-Easy", {**ARC_ITEM, "answer": "answer9"})


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("boolq", "the correct answer is true", "true"),
    ("boolq", "False? no: it is false, not true", "false"),  # case-sensitive, first match wins
    ("boolq", "The answer is yes", None),
    ("piqa", "solution2 is better than solution1", "solution2"),
    ("social_i_qa", "the correct answer is answer3", "answer3"),
    ("ARC-Challenge", "answer5", "answer5"),
    ("openbookqa", "answer10", "answer1"),  # the regex has no word boundary
    ("hellaswag", "ending4.", "ending4"),
    ("hellaswag", "answer2", None),
    ("winogrande", "  option2  ", "option2"),
])
def test_extract_answer_reproduces_llm_adapters(name, text, expected):
    assert extract_answer(name, text) == expected


def test_accuracy():
    predictions = [extract_answer("piqa", t) for t in ("solution1", "no idea", "solution2", "solution2")]
    assert accuracy(predictions, ["solution1", "solution1", "solution2", "solution1"]) == 0.5


def test_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="commonsense/piqa/train.json not found"):
        load_commonsense("piqa", tmp_path, "train")
    with pytest.raises(ValueError, match="'siqa'.*boolq, piqa"):
        load_commonsense("siqa", tmp_path)
    path = tmp_path / "commonsense/boolq/test.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps([{"instruction": "q", "output": "o"}]), encoding="utf-8")
    with pytest.raises(ValueError, match="record 1: missing field\\(s\\) answer"):
        load_commonsense("boolq", tmp_path)
    path.write_text("[{", encoding="utf-8")
    with pytest.raises(ValueError, match="test.json: invalid JSON"):
        load_commonsense("boolq", tmp_path)


def test_sets_are_the_llm_adapters_eight():
    assert COMMONSENSE_SETS == ("boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Easy",
                                "ARC-Challenge", "openbookqa")
