"""Model-level behaviour: step 0, gradients, reversibility, merge, several adapters, parameter counts."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import tiny_bert, tiny_gpt2, tiny_llama, token_batch
from torch import nn

import kasa_peft
from kasa_peft import (
    KasaConfig, adapters_per_example, delete_adapter, disable_adapters, inject, kasa_layers, merge,
    merge_and_unload, set_adapter, trainable_parameters, unload, unmerge,
)

from .helpers import matching_linears, outputs, randomize_updates, rel_err, train_steps, truncated_copy

CASES = {  # factory, targets, modules_to_save
    "bert": (tiny_bert, ("query", "value"), ("classifier",)),
    "llama": (tiny_llama, ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj"), ()),
    "gpt2": (tiny_gpt2, ("c_attn", "c_fc", "c_proj"), ()),
}


@pytest.fixture(params=list(CASES))
def case(request) -> tuple[nn.Module, KasaConfig]:
    factory, targets, modules_to_save = CASES[request.param]
    return factory(), KasaConfig(r=4, target_modules=targets, modules_to_save=modules_to_save)


def module_types(model: nn.Module) -> list[tuple[str, type]]:
    return [(name, type(m)) for name, m in model.named_modules()]


def test_step_zero_equals_the_truncated_base(case):
    model, config = case
    expected = outputs(truncated_copy(model, config.target_modules, r=config.r), token_batch())
    inject(model, config)
    assert rel_err(outputs(model, token_batch()), expected) <= 1e-5


def test_only_adapter_and_saved_module_parameters_get_gradients():
    model = inject(tiny_bert(), KasaConfig(r=4, modules_to_save=("classifier",)))
    model(token_batch()).logits.sum().backward()
    expected = {n for n, _ in model.named_parameters()
                if n.split(".")[-1] in ("A", "B", "sigma") or n.startswith("classifier.copies.default.")}
    assert len(expected) == 4 * 3 + 2
    assert {n for n, p in model.named_parameters() if p.grad is not None} == expected
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected


def test_disable_adapters_gives_the_original_outputs_also_when_merged(case):
    model, config = case
    batch = token_batch()
    original = outputs(model, batch)
    inject(model, config)
    train_steps(model, batch)
    adapted = outputs(model, batch)
    assert rel_err(adapted, original) > 1e-3
    for merged in (False, True):
        if merged:
            merge(model)
        with disable_adapters(model):
            assert rel_err(outputs(model, batch), original) <= 1e-6
        assert rel_err(outputs(model, batch), adapted) <= 1e-5


@pytest.mark.parametrize("merged", [False, True])
def test_unload_gives_back_the_original_weights_and_modules(case, merged):
    model, config = case
    original = copy.deepcopy(model)
    inject(model, config)
    train_steps(model, token_batch())
    if merged:
        merge(model)
    restored = unload(model)
    assert module_types(restored) == module_types(original)
    assert not hasattr(restored, "_kasa_state")
    expected_state = original.state_dict()
    assert list(restored.state_dict()) == list(expected_state)
    for name, value in restored.state_dict().items():
        expected = expected_state[name]
        if merged:
            assert rel_err(value, expected) <= 1e-6, name
        else:
            assert torch.equal(value, expected), name


def test_merge_equals_the_unmerged_adapter_and_unmerge_restores(case):
    model, config = case
    batch = token_batch()
    inject(model, config)
    train_steps(model, batch)
    assert all(layer.adapters["default"].B.abs().max() > 0 for _, layer in kasa_layers(model))
    weights = {n: layer.base_layer.weight.detach().clone() for n, layer in kasa_layers(model)}
    adapted = outputs(model, batch)
    merge(model)
    assert rel_err(outputs(model, batch), adapted) <= 1e-5
    unmerge(model)
    for name, layer in kasa_layers(model):
        assert rel_err(layer.base_layer.weight, weights[name]) <= 1e-6
    assert rel_err(outputs(model, batch), adapted) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_merge_then_unmerge_restores_a_half_precision_base_bit_exact(case, dtype):
    """Subtracting the delta again cannot undo the rounding of ``W + delta`` to 8 or 11 bits: the replaced weight
    is kept, so unmerge, disable_adapters and unload give back the base exactly (issue 16, item 17)."""
    model, config = case
    model.to(dtype)
    batch = token_batch()
    original, weights = outputs(model, batch), {n: p.detach().clone() for n, p in model.named_parameters()}
    inject(model, config)
    randomize_updates(model, seed=3)
    adapted = outputs(model, batch)
    for _ in range(2):  # twice: a kept weight is not lost by a second cycle
        merge(model)
        assert rel_err(outputs(model, batch), adapted) <= 3e-2  # the merged weights are rounded to dtype
        with disable_adapters(model):
            assert torch.equal(outputs(model, batch), original)
        unmerge(model)
        assert torch.equal(outputs(model, batch), adapted)
    merge(model)
    restored = unload(model)
    assert all(torch.equal(p, weights[n]) for n, p in restored.named_parameters())


def test_merge_and_unload_leaves_no_trace_of_the_library():
    model = inject(tiny_bert(), KasaConfig(r=4, modules_to_save=("classifier",)))
    batch = token_batch()
    train_steps(model, batch)
    adapted = outputs(model, batch)
    plain = merge_and_unload(model)
    assert not hasattr(plain, "_kasa_state")
    assert not [n for n, m in plain.named_modules() if type(m).__module__.startswith("kasa_peft")]
    assert module_types(plain) == module_types(tiny_bert())
    assert rel_err(outputs(plain, batch), adapted) <= 1e-5


def two_adapters(model: nn.Module) -> nn.Module:
    """Adapters 'a' (r=2, query/value) and 'b' (r=4, value/key), both with non-zero updates."""
    torch.manual_seed(1)
    inject(model, KasaConfig(r=2, target_modules=("query", "value"), modules_to_save=("classifier",)), "a")
    inject(model, KasaConfig(r=4, target_modules=("value", "key"), modules_to_save=("classifier",)), "b")
    randomize_updates(model)
    with torch.no_grad():
        for name in ("a", "b"):
            model.classifier.copies[name].weight.normal_()
    return model


def alone(model: nn.Module, name: str) -> nn.Module:
    """A fresh base with only adapter ``name`` injected (its own truncation), ``A, B, sigma`` copied from ``model``."""
    config = kasa_peft.kasa_state(model).configs[name]
    single = inject(tiny_bert(), config, name)
    sources = dict(kasa_layers(model))
    with torch.no_grad():
        for layer_name, layer in kasa_layers(single):
            for key in ("A", "B", "sigma"):
                getattr(layer.adapters[name], key).copy_(getattr(sources[layer_name].adapters[name], key))
        single.classifier.copies[name].load_state_dict(model.classifier.copies[name].state_dict())
    return single


def test_each_adapter_equals_a_model_with_only_that_adapter():
    model = two_adapters(tiny_bert())
    batch = token_batch()
    for name in ("a", "b"):
        set_adapter(model, name)
        assert rel_err(outputs(model, batch), outputs(alone(model, name), batch)) <= 1e-6
    assert rel_err(outputs(model, batch), outputs(alone(model, "a"), batch)) > 1e-3


def test_switching_sets_requires_grad_to_the_active_adapter_only():
    model = two_adapters(tiny_bert())
    set_adapter(model, "a")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".a." in n for n in trainable)
    with pytest.raises(ValueError, match=r"no adapter named 'c'; this model has \['a', 'b'\]"):
        set_adapter(model, "c")


def test_delete_adapter_leaves_the_other_intact():
    model = two_adapters(tiny_bert())
    batch = token_batch()
    expected = outputs(alone(model, "b"), batch)
    delete_adapter(model, "a")
    assert all("a" not in layer.adapters for _, layer in kasa_layers(model))
    set_adapter(model, "b")
    assert rel_err(outputs(model, batch), expected) <= 1e-6


def test_mixed_batch_equals_per_example_runs():
    model = two_adapters(tiny_bert())
    batch = token_batch(batch=4)
    names = ["b", None, "a", "b"]
    with adapters_per_example(model, names):
        mixed = outputs(model, batch)
    for row, name in enumerate(names):
        reference = tiny_bert() if name is None else alone(model, name)
        expected = outputs(reference, batch[row:row + 1])
        assert rel_err(mixed[row:row + 1], expected) <= 1e-6, (row, name)


def test_trainable_parameter_count():
    model = tiny_bert()
    total = sum(p.numel() for p in model.parameters())
    r, targets = 4, ("query", "value", "intermediate.dense")
    per_layer = sum(r * (m.in_features + m.out_features) + r for m in matching_linears(model, targets).values())
    head = sum(p.numel() for p in model.classifier.parameters())
    inject(model, KasaConfig(r=r, target_modules=targets, modules_to_save=("classifier",)))
    count = trainable_parameters(model)
    assert count.trainable == per_layer + head
    assert count.total == total + per_layer + head
    assert per_layer == 4 * (4 * 64 + 4) + 2 * (4 * (32 + 48) + 4)
