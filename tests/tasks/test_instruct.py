import json

import pytest

from kasa_peft.tasks.instruct import (
    exact_match,
    format_instruction,
    load_instruct_eval,
    load_sft_file,
    load_t0_train,
    normalize_answer,
    rouge_l,
)

NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\nSay hi.\n\n### Response:\n")
WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
              "Write a response that appropriately completes the request.\n\n### Instruction:\nTranslate.\n\n"
              "### Input:\nBonjour\n\n### Response:\n")


def test_format_instruction_is_the_alpaca_prompt():
    assert format_instruction("Say hi.") == NO_INPUT
    assert format_instruction("Say hi.", "") == NO_INPUT
    assert format_instruction("Translate.", "Bonjour") == WITH_INPUT


def test_load_sft_file_reads_alpaca_and_prompt_completion(tmp_path):
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hi"},
                                  {"instruction": "Translate.", "input": "Bonjour", "output": "Hello"},
                                  {"instruction": "Say hi.", "output": "Hey"}]), encoding="utf-8")
    assert load_sft_file(alpaca) == [(NO_INPUT, "Hi"), (WITH_INPUT, "Hello"), (NO_INPUT, "Hey")]
    completion = tmp_path / "pc.jsonl"
    completion.write_text('{"prompt": "Q: 2+2?\\n", "completion": "4"}\n\n{"prompt": "x", "completion": "y"}\n',
                          encoding="utf-8")
    assert load_sft_file(completion) == [("Q: 2+2?\n", "4"), ("x", "y")]


def test_load_sft_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl not found"):
        load_sft_file(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"record 1: has fields \['answer', 'question'\]; expected instruction/"):
        load_sft_file(bad)
    bad.write_text('{"prompt": "p", "completion": "c"}\n{"prompt": \n', encoding="utf-8")
    with pytest.raises(ValueError, match="bad.jsonl, line 2: invalid JSON"):
        load_sft_file(bad)
    not_a_list = tmp_path / "d.json"
    not_a_list.write_text('{"prompt": "p", "completion": "c"}', encoding="utf-8")
    with pytest.raises(ValueError, match="expected a JSON list of records, found dict"):
        load_sft_file(not_a_list)


@pytest.mark.integration
def test_real_t0_subset(data_dir):
    pairs = load_t0_train(data_dir)
    assert len(pairs) == 6800  # 34 files x 200 (SOURCES.md)
    assert not any("<|endoftext|>" in completion for _, completion in pairs)
    assert pairs[0][0].startswith("Given the following passage\n\n\"A generation later")  # adversarial_qa first
    assert pairs[200][0].startswith("Wall St. Bears Claw Back Into the Black")  # then ag_news
    assert pairs[200][0].endswith("What label best describes this news article?\n")
    assert pairs[200][1] == "Business"
    assert pairs[-1][0].endswith("Based on that, my rating is\n")  # yelp last
    assert pairs[-1][1] == "4 stars"


@pytest.mark.integration
def test_real_self_instruct_eval_sets(data_dir):
    user = load_instruct_eval(data_dir)
    seed = load_instruct_eval(data_dir, "seed")
    assert (len(user), len(seed)) == (252, 175)
    assert seed[1] == (format_instruction("What is the relation between the given pairs?",
                                          "Night : Day :: Right : Left"),
                       "The relation between the given pairs is that they are opposites.")
    assert seed[0][0] == format_instruction(
        "Is there anything I can eat for a breakfast that doesn't include eggs, yet includes protein, "
        "and has roughly 700-1000 calories?")
    assert user[0][1] == ("If you have any questions about my rate or find it necessary to increase or decrease "
                          "this project's scope, please let me know.")


def test_eval_loader_errors(tmp_path):
    with pytest.raises(ValueError, match="'superni'.*user_oriented, seed"):
        load_instruct_eval(tmp_path, "superni")
    with pytest.raises(FileNotFoundError, match="user_oriented_instructions.jsonl not found: pass --data-dir"):
        load_instruct_eval(tmp_path)
    (tmp_path / "instruct/self_instruct/t0_train_50k_subset").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no .jsonl files"):
        load_t0_train(tmp_path)


def test_super_ni_normalisation_keeps_articles():
    assert normalize_answer("  The  Answer: (B)!\n") == "the answer b"


def test_exact_match_percent():
    predictions = ["The answer.", "no", "Yes!"]
    references = ["the answer", ["maybe", "NO"], "yes."]
    assert exact_match(predictions, references) == pytest.approx(100.0)
    assert exact_match(["an answer"], ["answer"]) == 0.0  # articles are not removed


def test_rouge_l_percent_from_hand_worked_lcs():
    # "the cat sat on the mat" vs "the cat lay on a mat": LCS "the cat on mat" = 4 tokens, so P = 4/6, R = 4/6.
    # Second example: best of two references; "cats running" stems to "cat run" = the reference -> F = 1.
    f_first = 4 / 6
    score = rouge_l(["the cat sat on the mat", "Cats running"], ["the cat lay on a mat", ["dog", "cat run"]])
    assert score == pytest.approx(100 * (f_first + 1) / 2)


def test_metrics_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="1 predictions for 2 references"):
        rouge_l(["a"], ["a", "b"])
