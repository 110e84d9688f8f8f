"""KaSA's two regularisers, added to the task loss during training.

Per adapted layer, with ``A`` (r x in), ``B`` (out x r), ``sigma`` (r):

    L2 = sum_j sigma_j^2
    L3 = ||B^T B - I_r||_F + ||A A^T - I_r||_F                      (regularizer="paper")
    L3 = ||A^T A - I_in||_F + ||B B^T - I_out||_F                   (regularizer="reference")

and the loss is ``beta * L2 + gamma * L3`` averaged (``reduction="mean"``) or summed over the layers of
the active adapter. The reference form is the authors' script; it is evaluated through the identity
``||A^T A - I_n||_F^2 = ||A A^T - I_r||_F^2 + (n - r)``, so no in x in matrix is ever built.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .config import Regularizer
from .layer import KasaAdapter, full_tensor
from .model import kasa_layers, kasa_state


def singular_value_penalty(sigma: torch.Tensor) -> torch.Tensor:
    """``sum(sigma^2)`` in float32."""
    return sigma.float().pow(2).sum()


def orthogonality_penalty(A: torch.Tensor, B: torch.Tensor, mode: Regularizer = "paper") -> torch.Tensor:
    """``||B^T B - I||_F + ||A A^T - I||_F`` on r x r Grams, in float32 (see the module docstring for modes)."""
    A, B = A.float(), B.float()
    eye = torch.eye(A.shape[0], device=A.device)
    gram_a = torch.linalg.matrix_norm(A @ A.T - eye).pow(2)
    gram_b = torch.linalg.matrix_norm(B.T @ B - eye).pow(2)
    if mode == "reference":
        gram_a = gram_a + (A.shape[1] - A.shape[0])
        gram_b = gram_b + (B.shape[0] - B.shape[1])
    return gram_a.sqrt() + gram_b.sqrt()


class RegularizationTerms(NamedTuple):
    """The weighted, reduced terms: ``singular_value = beta * L2``, ``orthogonality = gamma * L3``."""

    singular_value: torch.Tensor
    orthogonality: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.singular_value + self.orthogonality


def regularization_terms(model: nn.Module) -> RegularizationTerms:
    """KaSA's L2 and L3 terms for the active adapter (zero when none is active, disabled or merged)."""
    state = kasa_state(model)
    adapters: list[KasaAdapter] = [
        layer.adapters[layer.active_adapter] for _, layer in kasa_layers(model)
        if layer.active_adapter in layer.adapters and not layer.disabled and layer.merged_adapter is None
    ]
    config = state.configs[state.active] if adapters else None
    if config is None or not (config.beta or config.gamma):
        zero = torch.zeros(())
        return RegularizationTerms(zero, zero)
    if any(a.sigma.numel() == 0 for a in adapters):
        raise ValueError("the adapter parameters are partitioned outside forward (DeepSpeed ZeRO-3), and KaSA's "
                         "regulariser needs them whole: train with FSDP2, DDP or ZeRO-2, or set beta = gamma = 0")
    # on full parameters: FSDP2 shards A, B, sigma by rows, and the Gram norms do not split into shard terms
    l2 = torch.stack([singular_value_penalty(full_tensor(a.sigma)) for a in adapters])
    l3 = torch.stack([orthogonality_penalty(full_tensor(a.A), full_tensor(a.B), config.regularizer) for a in adapters])
    reduce = torch.mean if config.reduction == "mean" else torch.sum
    return RegularizationTerms(config.beta * reduce(l2), config.gamma * reduce(l3))


def regularization_loss(model: nn.Module) -> torch.Tensor:
    """``beta * L2 + gamma * L3`` of the active adapter: add it to the task loss."""
    return regularization_terms(model).total
