"""The adapted layer: its formula, any input shape, dropout only on the update, GPT-2 Conv1D."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import tiny_gpt2, token_batch
from torch import nn
from transformers.pytorch_utils import Conv1D

from kasa_peft import KasaConfig, KasaLayer, dropped_components, inject, kasa_layers, merge, truncate_smallest, unmerge

from .helpers import dropped_product, outputs, randomize_updates, rel_err


def adapted_linear(in_features: int = 12, out_features: int = 20, dropout: float = 0.0, seed: int = 0) -> KasaLayer:
    """A KasaLayer over a random nn.Linear with one active adapter whose ``B`` is non-zero."""
    torch.manual_seed(seed)
    config = KasaConfig(r=3, alpha=6, dropout=dropout)
    layer = KasaLayer(nn.Linear(in_features, out_features))
    adapter = layer.add_adapter("default", config, truncate_smallest(layer.base_layer.weight, config.r))
    layer.active_adapter = "default"
    with torch.no_grad():
        adapter.B.normal_()
    return layer.eval()


def expected_output(layer: KasaLayer, x: torch.Tensor) -> torch.Tensor:
    """``x (W - U_d S_d V_d^T + (alpha/r) B diag(sigma) A)^T + b`` with the truncation by float64 SVD."""
    adapter, w = layer.adapters["default"], layer.base_layer.weight
    update = 2.0 * (adapter.B * adapter.sigma).double() @ adapter.A.double()
    weight = w.double() - dropped_product(w, adapter.A.shape[0]) + update
    return x.double() @ weight.T + layer.base_layer.bias.double()


@pytest.mark.parametrize("leading", [(5,), (2, 3), (2, 2, 3)])
def test_any_leading_shape_equals_row_by_row(leading):
    layer = adapted_linear()
    x = torch.randn(*leading, 12)
    with torch.no_grad():
        y = layer(x)
        rows = torch.stack([layer(row[None])[0] for row in x.reshape(-1, 12)]).reshape(*leading, 20)
    assert y.shape == (*leading, 20)
    torch.testing.assert_close(y, rows, rtol=1e-6, atol=1e-6)
    assert rel_err(y, expected_output(layer, x)) <= 1e-6


def test_dropout_acts_on_the_update_only():
    layer = adapted_linear(dropout=0.5).train()
    x = torch.randn(64, 12)
    with torch.no_grad():
        first, second = layer(x), layer(x)
        assert not torch.equal(first, second)
        layer.adapters["default"].B.zero_()
        truncated_base = x.double() @ (layer.base_layer.weight.double() - dropped_product(layer.base_layer.weight, 3)).T
        assert rel_err(layer(x), truncated_base + layer.base_layer.bias.double()) <= 1e-6


def test_half_precision_base_keeps_its_dtype_and_trains_a_float32_adapter():
    layer = adapted_linear()
    layer.base_layer.to(torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in layer.adapters.parameters())
    y = layer(torch.randn(4, 12, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16


GPT2_TARGETS = ("c_attn", "c_fc", "c_proj")


def test_gpt2_conv1d_truncation_matches_the_transposed_linear():
    model = inject(tiny_gpt2(), KasaConfig(r=4, target_modules=GPT2_TARGETS))
    layers = dict(kasa_layers(model))
    assert len(layers) == 8 and all(isinstance(layer.base_layer, Conv1D) for layer in layers.values())
    c_attn = layers["transformer.h.0.attn.c_attn"]
    assert (c_attn.in_features, c_attn.out_features) == (32, 96)
    for name, parts in dropped_components(model, "default").items():
        weight = layers[name].base_layer.weight.T  # Conv1D stores (in, out)
        assert parts.us.shape == (weight.shape[0], 4) and parts.vt.shape == (4, weight.shape[1])
        assert rel_err(weight.double() - parts.us @ parts.vt, weight.double() - dropped_product(weight, 4)) <= 1e-6


def test_gpt2_conv1d_layer_equals_an_nn_linear_with_the_transposed_weight():
    model = inject(tiny_gpt2(), KasaConfig(r=4, target_modules=GPT2_TARGETS))
    randomize_updates(model)
    conv_layer = dict(kasa_layers(model))["transformer.h.0.attn.c_attn"]
    conv = conv_layer.base_layer
    linear = nn.Linear(32, 96)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)
        linear.bias.copy_(conv.bias)
    linear_layer = KasaLayer(linear)
    linear_layer.adapters["default"] = copy.deepcopy(conv_layer.adapters["default"])
    linear_layer.active_adapter = "default"
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(conv_layer(x), linear_layer(x), rtol=1e-6, atol=1e-6)


def test_gpt2_conv1d_merge_and_unmerge():
    model = inject(tiny_gpt2(), KasaConfig(r=4, target_modules=GPT2_TARGETS))
    randomize_updates(model)
    batch = token_batch()
    adapted = outputs(model, batch)
    layer = dict(kasa_layers(model))["transformer.h.1.mlp.c_fc"]
    original = layer.base_layer.weight.detach().clone()
    adapter = layer.adapters["default"]
    merge(model)
    expected = (original.T.double() - adapter.dropped_us.double() @ adapter.dropped_vt.double()
                + adapter.scale * (adapter.B * adapter.sigma).double() @ adapter.A.double()).T
    assert rel_err(layer.base_layer.weight, expected) <= 1e-6
    assert rel_err(outputs(model, batch), adapted) <= 1e-5
    unmerge(model)
    assert rel_err(layer.base_layer.weight, original) <= 1e-6
    assert rel_err(outputs(model, batch), adapted) <= 1e-6
