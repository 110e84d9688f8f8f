"""The added baselines run through the same `kasa-peft train` and `kasa-peft eval --run` as the other methods.

Trainable-parameter counts are the methods' formulas for the tiny BERT (2 blocks, hidden 32, MLP 48, query and
value targeted, a new 3-class head of 32 x 3 + 3 parameters), evaluated here by hand; tests/training/
test_baselines.py checks the equations themselves.
"""

from __future__ import annotations

import json

import pytest

from .helpers import train_classifier, write_classification_files

R, D, INTER, LAYERS = 8, 32, 48, 2
HEAD = D * 3 + 3
ADAPTER = 2 * R * D + D + R  # 2md + d + m
EXPECTED_TRAINABLE = {
    "bitfit": LAYERS * (3 * D + D + D + INTER + D + D) + D + D + HEAD,
    "adapter-h": 2 * LAYERS * ADAPTER + (2 * LAYERS + 1) * 2 * D + HEAD,
    "adapter-p": LAYERS * ADAPTER + HEAD,
    "adapter-l": LAYERS * (ADAPTER + 2 * D) + HEAD,
    "adapter-d": LAYERS * ADAPTER + HEAD,
    "series": LAYERS * 2 * R * D + HEAD,
    "ft-top2": LAYERS * (4 * (D * D + D) + 4 * D + 2 * D * INTER + INTER + D) + HEAD,
    "vera": 4 * (R + D) + HEAD,
    "dylora": 4 * R * (D + D) + HEAD,
}
SFT_ROWS = [{"instruction": "Name a colour.", "input": "", "output": "Blue."},
            {"prompt": "Say hello.\n", "completion": "Hello!"}]


@pytest.mark.parametrize("method", sorted(EXPECTED_TRAINABLE))
def test_baseline_trains_and_evaluates_through_the_cli(method, cli, bert_dir, tmp_path):
    out, record = train_classifier(cli, bert_dir, tmp_path, method)
    assert record["method"] == method and record["trainable_parameters"] == EXPECTED_TRAINABLE[method]
    again = cli("eval", "--run", out)  # the saved weights load back onto a fresh base
    assert again.code == 0, again.err
    assert json.loads(again.out) == pytest.approx(record["final"]["metrics"])


@pytest.mark.parametrize("method", ["prefix", "parallel"])
def test_causal_lm_baseline_trains_and_evaluates_through_the_cli(method, cli, llama_dir, tmp_path):
    train_file, eval_file = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in SFT_ROWS * 4))
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in SFT_ROWS))
    out = tmp_path / method
    result = cli("train", "--task", "sft", "--model", llama_dir, "--method", method, "--train-file", train_file,
                 "--eval-file", eval_file, "--output-dir", out, "--max-steps", 2, "--batch-size", 4,
                 "--max-length", 64, "--max-new-tokens", 6)
    assert result.code == 0, result.err
    record = json.loads((out / "metrics.json").read_text())
    again = cli("eval", "--run", out)  # generation included: a prefix model generates with its prefix
    assert again.code == 0, again.err
    assert json.loads(again.out) == pytest.approx(record["final"]["metrics"])


@pytest.mark.parametrize("method, message", [
    ("bitfit", "'bitfit' trains bias terms only, and LlamaForSequenceClassification has none"),
    ("prefix", "'prefix' trains a key/value prefix, which PEFT feeds only to a causal LM"),
])
def test_a_method_the_model_cannot_take_is_refused_before_the_run_starts(method, message, cli, llama_dir, tmp_path):
    train_file, eval_file = write_classification_files(tmp_path)
    out = tmp_path / "out"
    result = cli("train", "--task", "classify", "--model", llama_dir, "--method", method, "--output-dir", out,
                 "--train-file", train_file, "--eval-file", eval_file, "--text-columns", "review",
                 "--label-column", "label")
    assert result.code == 1
    assert [line for line in result.err.splitlines() if message in line][0].startswith("kasa-peft: error: ")
    assert not out.exists()
