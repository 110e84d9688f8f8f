"""KaSA's regularisers against their formulas evaluated on explicit matrices."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_bert, tiny_llama

from kasa_peft import (
    KasaConfig, disable_adapters, inject, kasa_layers, merge, regularization_loss, regularization_terms,
    set_adapter,
)

from .helpers import randomize_updates

TARGETS = ("q_proj", "v_proj", "down_proj")


def frobenius(matrix: torch.Tensor) -> torch.Tensor:
    return torch.linalg.norm(matrix, "fro")


def paper_terms(A: torch.Tensor, B: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum(sigma^2)`` and ``||B^T B - I_r||_F + ||A A^T - I_r||_F``."""
    eye = torch.eye(A.shape[0])
    return sigma.pow(2).sum(), frobenius(B.T @ B - eye) + frobenius(A @ A.T - eye)


def reference_terms(A: torch.Tensor, B: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference script's ``loss_fn``: ``||A^T A - I_in||_F + ||B B^T - I_out||_F`` on full-size Grams."""
    return sigma.pow(2).sum(), frobenius(A.T @ A - torch.eye(A.shape[1])) + frobenius(B @ B.T - torch.eye(B.shape[0]))


def expected_loss(model, adapter_name: str, terms, beta: float, gamma: float, reduction: str) -> torch.Tensor:
    adapters = [layer.adapters[adapter_name] for _, layer in kasa_layers(model) if adapter_name in layer.adapters]
    per_layer = [terms(adapter.A, adapter.B, adapter.sigma) for adapter in adapters]
    l2 = torch.stack([t[0] for t in per_layer])
    l3 = torch.stack([t[1] for t in per_layer])
    reduce = torch.mean if reduction == "mean" else torch.sum
    return beta * reduce(l2) + gamma * reduce(l3)


def adapted(regularizer: str, reduction: str) -> torch.nn.Module:
    model = inject(tiny_llama(), KasaConfig(r=4, beta=0.3, gamma=0.7, target_modules=TARGETS,
                                            regularizer=regularizer, reduction=reduction))
    randomize_updates(model)
    return model


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("regularizer, terms", [("paper", paper_terms), ("reference", reference_terms)])
def test_loss_and_gradient_equal_the_formula(regularizer, terms, reduction):
    model = adapted(regularizer, reduction)
    loss = regularization_loss(model)
    expected = expected_loss(model, "default", terms, 0.3, 0.7, reduction)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params)
    expected_grads = torch.autograd.grad(expected, params)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)


def test_terms_are_weighted_separately():
    model = adapted("paper", "mean")
    terms = regularization_terms(model)
    l2 = torch.stack([layer.adapters["default"].sigma.pow(2).sum() for _, layer in kasa_layers(model)])
    torch.testing.assert_close(terms.singular_value, 0.3 * l2.mean(), rtol=1e-6, atol=0)
    torch.testing.assert_close(terms.total, terms.singular_value + terms.orthogonality)


def test_mean_is_sum_over_the_number_of_layers():
    mean, total = adapted("paper", "mean"), adapted("paper", "sum")
    layers = len(list(kasa_layers(mean)))
    assert layers == 6
    torch.testing.assert_close(regularization_loss(total), layers * regularization_loss(mean), rtol=1e-6, atol=0)


def test_only_the_active_adapter_counts():
    model = tiny_bert()
    inject(model, KasaConfig(r=2, beta=1.0, gamma=1.0, reduction="sum", target_modules=("query",)), "a")
    inject(model, KasaConfig(r=4, beta=2.0, gamma=0.5, reduction="mean", target_modules=("value", "key")), "b")
    randomize_updates(model)
    for name, beta, gamma, reduction in (("a", 1.0, 1.0, "sum"), ("b", 2.0, 0.5, "mean")):
        set_adapter(model, name)
        expected = expected_loss(model, name, paper_terms, beta, gamma, reduction)
        torch.testing.assert_close(regularization_loss(model), expected, rtol=1e-6, atol=0)


def test_zero_when_disabled_or_merged():
    model = adapted("paper", "mean")
    assert regularization_loss(model) > 0
    with disable_adapters(model):
        assert regularization_loss(model) == 0
    merge(model)
    assert regularization_loss(model) == 0
