"""export_merged: a plain Hugging Face model directory with the adapter folded into the weights."""

from __future__ import annotations

import pytest
import torch
import transformers
from tiny_models import token_batch

import kasa_peft as kp
from kasa_peft.interop import export_merged

from .support import relative_error


@pytest.mark.parametrize("name", ["bert", "llama", "gpt2"])
def test_plain_from_pretrained_gives_the_adapted_model(setups, tmp_path, name):
    setup = setups[name]
    out = export_merged(setup.adapter_dir, tmp_path / "merged")
    architecture = transformers.AutoConfig.from_pretrained(out).architectures[0]
    merged = getattr(transformers, architecture).from_pretrained(out).eval()
    with torch.no_grad():
        expected = setup.adapted()(token_batch()).logits
        original = setup.base()(token_batch()).logits
        actual = merged(token_batch()).logits
    assert relative_error(actual, expected) <= 1e-5
    assert relative_error(original, expected) > 1e-2
    assert not any(isinstance(m, (kp.KasaLayer, kp.ModulesToSave)) for m in merged.modules())
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    assert (out / "generation_config.json").is_file() is (name != "bert")  # the causal LMs' come along


def test_the_tokenizer_comes_along_when_the_base_has_one(setups, tmp_path):
    bert = export_merged(setups["bert"].adapter_dir, tmp_path / "bert")
    llama = export_merged(setups["llama"].adapter_dir, tmp_path / "llama")
    tokenizer = transformers.AutoTokenizer.from_pretrained(bert)
    reference = transformers.AutoTokenizer.from_pretrained(setups["bert"].base_dir)
    assert tokenizer("w1 w7 w3")["input_ids"] == reference("w1 w7 w3")["input_ids"]
    assert not (llama / "tokenizer_config.json").exists()


def test_a_live_model_is_merged_on_a_copy(setups, tmp_path):
    model = setups["llama"].adapted()
    with torch.no_grad():
        before = model(token_batch()).logits
    out = export_merged(model, tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(model(token_batch()).logits, before, rtol=0, atol=0)
        merged = transformers.LlamaForCausalLM.from_pretrained(out).eval()
        assert relative_error(merged(token_batch()).logits, before) <= 1e-5
    assert all(layer.merged_adapter is None for _, layer in kp.kasa_layers(model))
