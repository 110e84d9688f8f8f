"""export_lora: a plain PEFT LoRA of rank 2r that PEFT 0.21.2 loads onto the untouched base."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file
from tiny_models import token_batch
from transformers import AutoConfig

import kasa_peft as kp
from kasa_peft.interop import export_lora, load_pretrained

from .support import relative_error

MODELS = ["bert", "llama", "gpt2"]


def peft_outputs(base_dir, adapter_dir) -> torch.Tensor:
    """The check path: only transformers and peft."""
    import transformers

    architecture = AutoConfig.from_pretrained(base_dir).architectures[0]
    base = getattr(transformers, architecture).from_pretrained(base_dir).eval()
    with torch.no_grad():
        return PeftModel.from_pretrained(base, str(adapter_dir)).eval()(token_batch()).logits


@pytest.mark.parametrize("name", MODELS)
def test_peft_reproduces_the_kasa_model(setups, tmp_path, name):
    setup = setups[name]
    out = export_lora(setup.adapter_dir, tmp_path / "lora")
    with torch.no_grad():
        expected = setup.adapted()(token_batch()).logits
        original = setup.base()(token_batch()).logits
    actual = peft_outputs(setup.base_dir, out)
    assert relative_error(actual, expected) <= 1e-5
    assert relative_error(original, expected) > 1e-2  # the adapter changes the outputs: the check can fail


@pytest.mark.parametrize("name", MODELS)
def test_config_and_keys_are_what_peft_writes(setups, tmp_path, name):
    setup = setups[name]
    out = export_lora(setup.adapter_dir, tmp_path / "lora")
    written = json.loads((out / "adapter_config.json").read_text())
    r = setup.config.r
    assert (written["peft_type"], written["r"], written["lora_alpha"]) == ("LORA", 2 * r, 2 * r)
    assert written["use_rslora"] is False
    assert written["fan_in_fan_out"] is (name == "gpt2")
    assert written["modules_to_save"] == (["classifier"] if name == "bert" else None)
    assert written["base_model_name_or_path"] == str(setup.base_dir)
    # PEFT itself, given that config, creates (and would save) exactly these keys and shapes
    reference = get_peft_model(setup.base(), LoraConfig.from_pretrained(str(out)))
    expected = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(reference).items()}
    tensors = load_file(out / "adapter_model.safetensors")
    assert {k: tuple(v.shape) for k, v in tensors.items()} == expected


@pytest.mark.parametrize("source", ["directory", "model"])
def test_targets_select_exactly_the_adapted_layers(setups, tmp_path, source):
    """GPT-2 adapts attn.c_proj but not mlp.c_proj. With the model at hand the targets are the shortest suffixes
    that tell them apart; from the adapter file alone (no base loaded) they are the full layer names."""
    adapted = {n for n, _ in kp.kasa_layers(setups["gpt2"].adapted())}
    out = export_lora(setups["gpt2"].adapter_dir if source == "directory" else setups["gpt2"].adapted(),
                      tmp_path / "lora")
    targets = json.loads((out / "adapter_config.json").read_text())["target_modules"]
    assert sorted(targets) == (["attn.c_proj", "c_attn", "c_fc"] if source == "model" else sorted(adapted))
    peft_model = PeftModel.from_pretrained(setups["gpt2"].base(), str(out))
    wrapped = {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == adapted


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_scaling_is_one_and_the_delta_is_kasas(setups, tmp_path, name):
    """lora_alpha = r' = 2r round-trips as scaling 1; PEFT's delta is scale B diag(sigma) A - us vt."""
    setup = setups[name]
    out = export_lora(setup.adapter_dir, tmp_path / "lora")
    peft_model = PeftModel.from_pretrained(setup.base(), str(out))
    _, tensors = kp.read_adapter(setup.adapter_dir)
    scale = setup.config.alpha / setup.config.r
    for module_name, module in peft_model.named_modules():
        if not hasattr(module, "lora_A"):
            continue
        layer = module_name.removeprefix("base_model.model.")
        A, B, sigma, us, vt = (tensors[f"{layer}.{k}"] for k in ("A", "B", "sigma", "dropped_us", "dropped_vt"))
        expected = scale * B @ torch.diag(sigma) @ A - us @ vt
        delta = module.get_delta_weight("default")
        assert module.scaling["default"] == 1.0
        torch.testing.assert_close(delta.T if name == "gpt2" else delta, expected, rtol=1e-5, atol=1e-6)


def test_exports_a_chosen_adapter_of_a_live_model(setups, tmp_path):
    setup = setups["llama"]
    model = setup.adapted("task")
    kp.inject(model, kp.KasaConfig(r=2, target_modules=("q_proj",)), "other")
    out = export_lora(model, tmp_path / "lora", adapter_name="task")
    with torch.no_grad():
        kp.set_adapter(model, "task")
        expected = model(token_batch()).logits
    assert relative_error(peft_outputs(setup.base_dir, out), expected) <= 1e-5
    assert kp.kasa_state(model).active == "task"  # the model is only read


def test_export_onto_a_given_base_module_leaves_it_unchanged(setups, tmp_path):
    setup = setups["bert"]
    base = load_pretrained(str(setup.base_dir))
    before = {k: v.clone() for k, v in base.state_dict().items()}
    export_lora(setup.adapter_dir, tmp_path / "lora", base_model=base)
    after = base.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], v) for k, v in before.items())
    assert not list(kp.kasa_layers(base))
