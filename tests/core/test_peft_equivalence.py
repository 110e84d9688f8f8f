"""Equivalence with Hugging Face PEFT 0.21.2's KaSA (``LoraConfig(kasa_config=...)``): same weights, same outputs."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_bert, tiny_llama, token_batch

import kasa_peft
from kasa_peft import inject, kasa_layers, regularization_loss

from .helpers import dropped_product, outputs, randomize_updates, rel_err

peft = pytest.importorskip("peft", minversion="0.21.2")

R, ALPHA, BETA, GAMMA = 4, 8.0, 0.05, 0.02
CASES = {
    "bert": (tiny_bert, ("query", "value")),
    "llama": (tiny_llama, ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")),
}


@pytest.fixture(params=list(CASES), scope="module")
def pair(request):
    """The same base adapted by kasa-peft and by PEFT, with our (trained-like) A, B, sigma copied into PEFT's."""
    factory, targets = CASES[request.param]
    ours = inject(factory(), kasa_peft.KasaConfig(r=R, alpha=ALPHA, beta=BETA, gamma=GAMMA, target_modules=targets,
                                                  regularizer="paper", reduction="sum"))
    randomize_updates(ours)
    config = peft.LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(targets),
                             kasa_config=peft.KasaConfig(beta=BETA, gamma=GAMMA))
    theirs = peft.get_peft_model(factory(), config).eval()
    with torch.no_grad():
        for name, layer in kasa_layers(ours):
            peft_layer = theirs.base_model.model.get_submodule(name)
            adapter = layer.adapters["default"]
            peft_layer.lora_A["default"].weight.copy_(adapter.A)
            peft_layer.lora_B["default"].weight.copy_(adapter.B)
            peft_layer.lora_diag["default"].copy_(adapter.sigma)
    return ours, theirs, factory


def test_truncated_weights_match(pair):
    """PEFT computes the SVD and rebuilds ``U_k S_k V_k^T`` in float32: LAPACK's backward error bound
    ``k eps ||W||`` for the decomposition plus ``k eps`` for the rank-k rebuild. Ours stays within 1e-7 of float64.
    Dropping a wrong number of components would miss by far more (the smallest singular value of ||W||)."""
    ours, theirs, _ = pair
    layers = list(kasa_layers(ours))
    assert len(layers) in (4, 10)
    for name, layer in layers:
        adapter, weight = layer.adapters["default"], layer.base_layer.weight
        truncated = weight.double() - adapter.dropped_us.double() @ adapter.dropped_vt.double()
        peft_weight = theirs.base_model.model.get_submodule(name).base_layer.weight
        float32_floor = 2 * min(weight.shape) * torch.finfo(torch.float32).eps
        assert rel_err(truncated, peft_weight) <= float32_floor, name
        assert rel_err(truncated, weight.double() - dropped_product(weight, R)) <= 1e-7, name


def test_forward_outputs_match(pair):
    ours, theirs, factory = pair
    batch = token_batch()
    expected = outputs(theirs, batch)
    assert rel_err(outputs(ours, batch), expected) <= 1e-5
    assert rel_err(outputs(factory(), batch), expected) > 1e-2  # the truncation and update do show


def test_regularization_loss_matches_peft_in_paper_sum_mode(pair):
    ours, theirs, _ = pair
    assert regularization_loss(ours) > 0
    torch.testing.assert_close(regularization_loss(ours), theirs.base_model._get_kasa_loss(), rtol=1e-6, atol=0)


def test_sigma_started_at_ones_without_truncation_trains_as_peft_lora():
    """sigma_init='ones', drop_rank=0, no penalties: the untrained model and the first gradients of A and B are
    PEFT LoRA's with the same A (sigma's own gradient is what LoRA lacks)."""
    targets = ("q_proj", "v_proj")
    ours = inject(tiny_llama(), kasa_peft.KasaConfig(r=R, alpha=ALPHA, beta=0.0, gamma=0.0, target_modules=targets,
                                                     drop_rank=0, sigma_init="ones"))
    theirs = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=R, lora_alpha=ALPHA, target_modules=list(targets)))
    with torch.no_grad():
        for name, layer in kasa_layers(ours):
            theirs.base_model.model.get_submodule(name).lora_A["default"].weight.copy_(layer.adapters["default"].A)
    batch = token_batch()
    for model in (ours, theirs):
        model(batch, labels=batch).loss.backward()
    assert torch.equal(outputs(ours, batch), outputs(theirs, batch))
    for name, layer in kasa_layers(ours):
        adapter, peft_layer = layer.adapters["default"], theirs.base_model.model.get_submodule(name)
        assert torch.equal(adapter.sigma_init, torch.ones(R))
        assert torch.allclose(adapter.B.grad, peft_layer.lora_B["default"].weight.grad, rtol=1e-5, atol=1e-7), name
        assert torch.equal(adapter.A.grad, torch.zeros_like(adapter.A)), name  # B = 0, as LoRA's
