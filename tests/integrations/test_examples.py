"""The scripts in examples/ run, each on a tiny model folder and local data, and leave a KaSA adapter."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from support import PAIRS, preferences, save_tiny_model
from tiny_models import tiny_llama, token_batch

from kasa_peft import load_adapter, read_adapter

pytest.importorskip("trl")
pytestmark = [pytest.mark.timeout(300), pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def example(request):
    """``example(name)``: the module examples/NAME.py, imported as its sibling scripts import each other."""
    sys.path.insert(0, str(EXAMPLES))
    request.addfinalizer(lambda: sys.path.remove(str(EXAMPLES)))
    return importlib.import_module


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def logits(model, x):
    with torch.no_grad():
        return model.eval()(x).logits


def test_sft_then_dpo_then_the_plain_trainer(example, tmp_path):
    model_dir = str(save_tiny_model(tmp_path / "model"))
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": p},
                                                               {"role": "assistant", "content": c}]} for p, c in PAIRS])
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preferences(8).to_list())
    texts = write_jsonl(tmp_path / "text.jsonl", [{"text": f"{p} {c}"} for p, c in PAIRS])
    common = ["--model", model_dir, "--max-steps", "2", "--logging-steps", "1"]

    example("sft_trl_chat").main([*common, "--dataset", chat, "--r", "4", "--output-dir", str(tmp_path / "sft")])
    sft = load_adapter(tiny_llama(), tmp_path / "sft")
    x = token_batch()
    assert (logits(sft, x) - logits(tiny_llama(), x)).abs().max() > 0  # trained: B moved from 0

    example("dpo_after_sft").main([*common, "--dataset", pairs, "--adapter", str(tmp_path / "sft"),
                                   "--output-dir", str(tmp_path / "dpo")])
    history = json.loads((tmp_path / "dpo" / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    assert history[0]["task_loss"] == pytest.approx(math.log(2), abs=1e-5)  # the reference is the SFT adapter
    assert read_adapter(tmp_path / "dpo")[0]["config"] == read_adapter(tmp_path / "sft")[0]["config"]

    example("plain_trainer").main([*common, "--dataset", texts, "--r", "4", "--output-dir", str(tmp_path / "lm")])
    metadata, _ = read_adapter(tmp_path / "lm")
    assert metadata["config"]["target_modules"] == "all-linear"
    load_adapter(tiny_llama(), tmp_path / "lm")
