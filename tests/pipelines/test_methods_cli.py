"""Each baseline runs through the same `kasa-peft train` command; only the adapter differs.

The trainable-parameter counts are the methods' own formulas for the tiny BERT (2 layers, hidden 32, query
and value adapted, a new 3-class head of 32 x 3 + 3 parameters), evaluated here.
"""

from __future__ import annotations

import json

import pytest

from .helpers import train_classifier

R, HIDDEN, LAYERS, ADAPTED = 8, 32, 2, 4
HEAD = HIDDEN * 3 + 3
LORA = ADAPTED * R * (HIDDEN + HIDDEN)
ADALORA_INIT_R = 12  # round(1.5 r): AdaLoRA starts from 1.5x the final rank budget
EXPECTED_TRAINABLE = {
    "lora": LORA + HEAD,
    "pissa": LORA + HEAD,
    "milora": LORA + HEAD,
    "dora": LORA + ADAPTED * HIDDEN + HEAD,  # + one magnitude per output feature
    "adalora": ADAPTED * (ADALORA_INIT_R * (HIDDEN + HIDDEN) + ADALORA_INIT_R) + HEAD,  # A, B and the diagonal E
    "peft-kasa": LORA + ADAPTED * R + HEAD,  # + lora_diag
    "kasa": LORA + ADAPTED * R + HEAD,  # A, B, sigma
}


@pytest.mark.parametrize("method", ["lora", "pissa", "milora", "dora", "adalora", "peft-kasa", "fft"])
def test_method_runs_through_the_cli(method, cli, bert_dir, tmp_path):
    out, record = train_classifier(cli, bert_dir, tmp_path, method)
    assert record["method"] == method and record["optimizer_steps"] == 2
    expected = record["total_parameters"] if method == "fft" else EXPECTED_TRAINABLE[method]
    assert record["trainable_parameters"] == expected
    assert json.loads((out / "kasa_peft_method.json").read_text())["method"] == method

    again = cli("eval", "--run", out)  # each method's saved result loads back onto a fresh base
    assert again.code == 0, again.err
    assert json.loads(again.out) == pytest.approx(record["final"]["metrics"])
    by_adapter = cli("eval", "--adapter", out, "--model", bert_dir, "--task", "classify",
                     "--train-file", tmp_path / "train.csv", "--eval-file", tmp_path / "eval.csv",
                     "--text-columns", "review", "--label-column", "label", "--max-length", 64)  # method from the dir
    assert by_adapter.code == 0, by_adapter.err
    assert json.loads(by_adapter.out) == pytest.approx(record["final"]["metrics"])
    if method == "lora":  # predict serves KaSA adapters: the error names what serves this one
        served = cli("predict", "--model", bert_dir, "--adapter", out, "--text", "a fine movie")
        assert served.code == 1 and "evaluate the run with `kasa-peft eval --run DIR`" in served.err
