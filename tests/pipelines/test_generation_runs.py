"""End-to-end causal-LM runs through the CLI on a tiny random Llama: E2E, commonsense, SFT.

The accuracies, exact matches and E2E file layouts in metrics.json are recomputed here from the files
the run wrote and the data read independently.
"""

from __future__ import annotations

import csv
import json
import re

import pytest
from rouge_score.rouge_scorer import RougeScorer
from transformers import AutoModelForCausalLM, AutoTokenizer

import kasa_peft
from kasa_peft.pipelines.causal_lm import generate_texts
from kasa_peft.tasks import e2e

from .helpers import run_cli

COMMON = ["--max-steps", 2, "--batch-size", 4, "--max-length", 64, "--max-new-tokens", 6]


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def no_java(monkeypatch):
    """METEOR, ROUGE-L and CIDEr need Java (slow to start): here they are reported unavailable, as without Java."""
    monkeypatch.setattr(e2e.shutil, "which", lambda name: None)


def test_e2e_writes_one_line_per_mr_and_scores_them(cli, llama_dir, data_dir, tmp_path, no_java):
    out = tmp_path / "e2e"
    result = cli("train", "--task", "e2e", "--model", llama_dir, "--data-dir", data_dir, "--output-dir", out,
                 "--max-train-samples", 8, "--max-eval-samples", 3, "--num-beams", 2, *COMMON)
    assert result.code == 0, result.err
    record = json.loads((out / "metrics.json").read_text())
    config = record["config"]
    assert (config["num_beams"], config["length_penalty"], config["no_repeat_ngram_size"]) == (2, 0.9, 4)
    assert config["target_modules"] == ["q_proj", "v_proj"]
    predictions = (out / "e2e_predictions.txt").read_text().splitlines()
    rows = list(csv.DictReader((out / "e2e_references.csv").open()))
    evaluated = list(dict.fromkeys(row["mr"] for row in rows))
    assert len(predictions) == len(evaluated) == 3
    with (data_dir / "e2e/test.csv").open() as handle:
        test_rows = list(csv.DictReader(handle))
    test_mrs = list(dict.fromkeys(row["mr"] for row in test_rows))
    positions = [test_mrs.index(mr) for mr in evaluated]
    assert positions == sorted(positions)  # the test set's order
    assert rows == [row for row in test_rows if row["mr"] in evaluated]  # all references of each MR
    metrics = record["final"]["metrics"]
    assert metrics["METEOR"] is None and "java" in metrics["METEOR_unavailable_reason"]

    scored = cli("score", "e2e", "--predictions", out / "e2e_predictions.txt", "--references",
                 out / "e2e_references.csv")
    assert scored.code == 0, scored.err
    assert json.loads(scored.out) == pytest.approx(metrics)


def check_commonsense_file(out, metrics: dict, sets: list[str]) -> None:
    records = read_jsonl(out / "commonsense_predictions.jsonl")
    for name in sets:
        rows = [r for r in records if r["set"] == name]
        assert rows
        option = sum(r["option_choice"] == r["answer"] for r in rows) / len(rows)
        assert metrics[f"{name}/option_accuracy"] == pytest.approx(option)
        generated = sum(r["extracted"] == r["answer"] for r in rows) / len(rows)
        assert metrics[f"{name}/generation_accuracy"] == pytest.approx(generated)


def test_commonsense_one_set_both_scorings(cli, llama_dir, data_dir, tmp_path):
    out = tmp_path / "boolq"
    result = cli("train", "--task", "commonsense:boolq", "--model", llama_dir, "--data-dir", data_dir,
                 "--output-dir", out, "--max-train-samples", 8, "--max-eval-samples", 4, *COMMON)
    assert result.code == 0, result.err
    record = json.loads((out / "metrics.json").read_text())
    assert record["config"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
    assert record["main_metric"] == "boolq/option_accuracy"
    metrics = record["final"]["metrics"]
    assert set(metrics) == {"boolq/generation_accuracy", "boolq/option_accuracy"}
    check_commonsense_file(out, metrics, ["boolq"])
    rows = read_jsonl(out / "commonsense_predictions.jsonl")
    for row in rows:  # LLM-Adapters' extraction: the first true/false in the generation
        found = re.findall("true|false", row["generation"].strip())
        assert row["extracted"] == (found[0] if found else None)


def test_commonsense_all_sets_and_average(cli, llama_dir, data_dir, tmp_path):
    out = tmp_path / "all"
    result = cli("train", "--task", "commonsense:all", "--model", llama_dir, "--data-dir", data_dir,
                 "--output-dir", out, "--max-train-samples", 8, "--max-eval-samples", 2, *COMMON)
    assert result.code == 0, result.err
    metrics = json.loads((out / "metrics.json").read_text())["final"]["metrics"]
    sets = ["boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Easy", "ARC-Challenge", "openbookqa"]
    check_commonsense_file(out, metrics, sets)
    for mode in ("generation_accuracy", "option_accuracy"):
        assert metrics[f"average/{mode}"] == pytest.approx(sum(metrics[f"{s}/{mode}"] for s in sets) / len(sets))


def test_sft_on_user_jsonl_files(cli, llama_dir, tmp_path):
    train_file, eval_file = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in [
        {"instruction": "Name a colour.", "input": "", "output": "Blue."},
        {"prompt": "Say hello.\n", "completion": "Hello!"}] * 4))
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in [
        {"instruction": "Name a fruit.", "input": "", "output": "An apple."},
        {"instruction": "Repeat the word.", "input": "moon", "output": "moon"}]))
    out = tmp_path / "sft"
    result = cli("train", "--task", "sft", "--model", llama_dir, "--train-file", train_file,
                 "--eval-file", eval_file, "--output-dir", out, *COMMON)
    assert result.code == 0, result.err
    record = json.loads((out / "metrics.json").read_text())
    # what an evaluation will cost is said before training starts
    max_new_tokens = record["config"]["max_new_tokens"]
    assert (f"each evaluation (at the end) covers 2 prompts, greedy decoding, up to {max_new_tokens} new tokens each "
            "(--max-eval-samples N evaluates a fixed subset)") in result.err
    assert record["config"]["use_chat_template"] is False  # the tiny tokenizer has none
    rows = read_jsonl(out / "sft_generations.jsonl")
    assert [r["reference"] for r in rows] == ["An apple.", "moon"]
    assert "### Input:\nmoon" in rows[1]["prompt"]
    scorer = RougeScorer(["rougeL"], use_stemmer=True)
    rouge = sum(scorer.score(r["reference"], r["generation"])["rougeL"].fmeasure for r in rows) / len(rows)
    metrics = record["final"]["metrics"]
    assert metrics["eval/rouge_l"] == pytest.approx(100 * rouge)
    squash = lambda text: " ".join(re.sub(r"[^\w\s]", "", text.lower()).split())  # noqa: E731
    assert metrics["eval/exact_match"] == pytest.approx(
        100 * sum(squash(r["generation"]) == squash(r["reference"]) for r in rows) / len(rows))


def test_sft_defaults_to_t0_and_self_instruct(cli, llama_dir, data_dir, tmp_path):
    out = tmp_path / "sft"
    result = cli("train", "--task", "sft", "--model", llama_dir, "--data-dir", data_dir, "--output-dir", out,
                 "--max-train-samples", 6, "--max-eval-samples", 2, *COMMON)
    assert result.code == 0, result.err
    metrics = json.loads((out / "metrics.json").read_text())["final"]["metrics"]
    assert set(metrics) == {"user_oriented/rouge_l", "user_oriented/exact_match", "seed/rouge_l", "seed/exact_match"}
    assert {r["set"] for r in read_jsonl(out / "sft_generations.jsonl")} == {"user_oriented", "seed"}


def test_generate_with_a_trained_adapter(capsys, llama_dir, tmp_path):
    train_file = tmp_path / "train.jsonl"
    train_file.write_text(json.dumps({"prompt": "Say hello.\n", "completion": "Hello!"}) + "\n")
    out = tmp_path / "run"
    trained = run_cli(capsys, "train", "--task", "sft", "--model", llama_dir, "--train-file", train_file,
                      "--eval-file", train_file, "--output-dir", out, *COMMON)
    assert trained.code == 0, trained.err
    generated = run_cli(capsys, "generate", "--model", llama_dir, "--adapter", f"hello={out}", "--prompt", "Say hello.",
                        "--max-new-tokens", 4)
    assert generated.code == 0, generated.err
    (row,) = [json.loads(line) for line in generated.out.splitlines()]
    assert row["adapter"] == "hello" and row["prompt"] == "Say hello."
    model = kasa_peft.load_adapter(AutoModelForCausalLM.from_pretrained(llama_dir), out)
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    assert [row["output"]] == generate_texts(model, tokenizer, ["Say hello."], max_new_tokens=4, progress=False)

    exported = run_cli(capsys, "export", out, "--format", "lora", "--out", tmp_path / "lora")
    assert exported.code == 0, exported.err
    assert json.loads((tmp_path / "lora" / "adapter_config.json").read_text())["r"] == 16  # a LoRA of rank 2r


def test_gpt2_conv1d_layers_train_with_their_default_target(cli, gpt2_dir, tmp_path):
    train_file = tmp_path / "train.jsonl"
    train_file.write_text(json.dumps({"prompt": "Say hello.\n", "completion": "Hello!"}) + "\n")
    out = tmp_path / "gpt2"
    result = cli("train", "--task", "sft", "--model", gpt2_dir, "--train-file", train_file, "--eval-file", train_file,
                 "--output-dir", out, *COMMON)
    assert result.code == 0, result.err
    record = json.loads((out / "metrics.json").read_text())
    assert record["config"]["target_modules"] == ["c_attn"]
    layers, hidden, r = 2, 32, 8
    assert record["trainable_parameters"] == layers * (r * (hidden + 3 * hidden) + r)  # c_attn: 32 -> 96
