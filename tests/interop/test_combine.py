"""combine_adapters: weighted task arithmetic that keeps sigma, against the explicit weight-space formula."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from tiny_models import token_batch

import kasa_peft as kp
from kasa_peft.interop import combine_adapters, export_peft_kasa

from .support import relative_error, train_like

TASKS = {"a": kp.KasaConfig(r=2, alpha=4, target_modules=("q_proj", "v_proj")),
         "b": kp.KasaConfig(r=3, alpha=3, target_modules=("v_proj", "up_proj"))}
WEIGHTS = {"a": 0.7, "b": -0.4}


def two_adapters(setup) -> torch.nn.Module:
    model = setup.base()
    for seed, (name, config) in enumerate(TASKS.items()):
        kp.inject(model, config, name)
        train_like(model, name, seed=20 + seed)
    return model


def expected_delta(model, layer_name: str, truncation_from: str) -> torch.Tensor:
    """sum_i w_i scale_i B_i diag(sigma_i) A_i - U_t S_t V_t^T, written out."""
    layer = model.get_submodule(layer_name)
    delta = torch.zeros(layer.out_features, layer.in_features)
    for name, weight in WEIGHTS.items():
        if name in layer.adapters:
            a = layer.adapters[name]
            delta += weight * TASKS[name].scale * a.B @ torch.diag(a.sigma) @ a.A
    if truncation_from in layer.adapters:
        t = layer.adapters[truncation_from]
        delta -= t.dropped_us @ t.dropped_vt
    return delta.detach()


@pytest.mark.parametrize("truncation_from", ["a", "b"])
def test_combined_adapter_is_the_weight_space_formula(setups, truncation_from):
    model = two_adapters(setups["llama"])
    combine_adapters(model, WEIGHTS, "ab", truncation_from=truncation_from)
    layers = dict(kp.kasa_layers(model))
    combined = [n for n, layer in layers.items() if "ab" in layer.adapters]
    assert len(combined) == 6  # q (a), v (a, b), up (b) in 2 blocks
    assert kp.kasa_state(model).configs["ab"].r == 5
    expected = {n: expected_delta(model, n, truncation_from) for n in combined}
    for name in combined:
        torch.testing.assert_close(layers[name].adapters["ab"].delta_weight().detach(), expected[name],
                                   rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        actual = model(token_batch()).logits
        reference = setups["llama"].base()
        for name in combined:
            reference.get_submodule(name).weight.add_(expected[name])
        assert relative_error(actual, reference(token_batch()).logits) <= 1e-5


def test_round_trip_through_save_and_load(setups, tmp_path):
    model = two_adapters(setups["llama"])
    combine_adapters(model, WEIGHTS, "ab")
    kp.save_adapter(model, tmp_path / "ab", "ab")
    loaded = kp.load_adapter(setups["llama"].base(), tmp_path / "ab")
    with torch.no_grad():
        torch.testing.assert_close(loaded(token_batch()).logits, model(token_batch()).logits, rtol=0, atol=1e-6)


def test_peft_add_weighted_adapter_drops_sigma(setups, tmp_path):
    """On the same two adapters, PEFT's "cat" combination builds sum_i w_i scale_i B_i A_i: no sigma."""
    setup = setups["llama"]
    model = two_adapters(setup)
    dirs = {}
    for name in TASKS:
        dirs[name] = export_peft_kasa(model, tmp_path / name, adapter_name=name)
    peft_model = PeftModel.from_pretrained(setup.base(), str(dirs["a"]), adapter_name="a")
    peft_model.load_adapter(str(dirs["b"]), adapter_name="b")
    peft_model.add_weighted_adapter(list(WEIGHTS), list(WEIGHTS.values()), "ab", combination_type="cat")
    combine_adapters(model, WEIGHTS, "ab")
    layer = "model.layers.0.self_attn.v_proj"  # adapted by both
    module = peft_model.base_model.model.get_submodule(layer)
    peft_update = module.lora_B["ab"].weight @ module.lora_A["ab"].weight
    ours = model.get_submodule(layer)
    sigma_free = sum(w * TASKS[n].scale * ours.adapters[n].B @ ours.adapters[n].A for n, w in WEIGHTS.items())
    torch.testing.assert_close(peft_update, sigma_free.detach(), rtol=1e-5, atol=1e-6)
    with_sigma = expected_delta(model, layer, "a") + ours.adapters["a"].dropped_us @ ours.adapters["a"].dropped_vt
    assert relative_error(peft_update, with_sigma.detach()) > 0.5


def test_refusals_change_nothing(setups):
    model = two_adapters(setups["llama"])
    kp.inject(model, kp.KasaConfig(r=2, target_modules=("k_proj",), modules_to_save=("lm_head",)), "head")
    cases = [({"a": 1.0, "x": 1.0}, "unknown adapters \\['x'\\]"),
             ({"a": 1.0, "head": 1.0}, "modules_to_save"),
             ({}, "cannot combine")]
    for weights, message in cases:
        with pytest.raises(ValueError, match=message):
            combine_adapters(model, weights, "c")
    assert set(kp.kasa_state(model).configs) == {"a", "b", "head"}
