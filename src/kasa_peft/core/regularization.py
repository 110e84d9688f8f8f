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

from typing import NamedTuple, cast

import torch
from torch import nn

from .config import Regularizer
from .layer import KasaAdapter, full_tensor
from .model import kasa_layers, kasa_state


def singular_value_penalty(sigma: torch.Tensor) -> torch.Tensor:
    """``sum(sigma^2)`` in float32 (over every element: a stack of several layers' ``sigma`` gives their sum)."""
    return sigma.float().pow(2).sum()


def gram_distance(M: torch.Tensor, mode: Regularizer = "paper") -> torch.Tensor:
    """``||M M^T - I_r||_F`` in float32 for ``M`` of shape (..., r, n), one value per leading index; in the
    reference mode ``||M^T M - I_n||_F``, evaluated on the r x r Gram (module docstring)."""
    M = M.float()
    r, n = M.shape[-2:]
    squared: torch.Tensor = torch.linalg.matrix_norm(M @ M.mT - torch.eye(r, device=M.device)).pow(2)
    return (squared + (n - r) if mode == "reference" else squared).sqrt()


def orthogonality_penalty(A: torch.Tensor, B: torch.Tensor, mode: Regularizer = "paper") -> torch.Tensor:
    """``||B^T B - I||_F + ||A A^T - I||_F`` on r x r Grams, in float32 (see the module docstring for modes)."""
    return gram_distance(A, mode) + gram_distance(B.mT, mode)


def stacked_by_shape(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """``tensors`` stacked into one tensor per (shape, dtype, device): the penalties of many layers then cost a
    few batched operations instead of a dozen small ones per layer."""
    groups: dict[tuple[torch.Size, torch.dtype, torch.device], list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.shape, tensor.dtype, tensor.device), []).append(tensor)
    return [torch.stack(group) for group in groups.values()]


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
        layer.adapter(layer.active_adapter) for _, layer in kasa_layers(model)
        if layer.active_adapter is not None and layer.active_adapter in layer.adapters and not layer.disabled
        and layer.merged_adapter is None
    ]
    config = state.configs[cast(str, state.active)] if adapters else None  # an adapter is active where any is
    if config is None or not (config.beta or config.gamma):
        zero = torch.zeros(())
        return RegularizationTerms(zero, zero)
    if any(a.sigma.numel() == 0 for a in adapters):
        raise ValueError("the adapter parameters are partitioned outside forward (DeepSpeed ZeRO-3), and KaSA's "
                         "regulariser needs them whole: train with FSDP2, DDP or ZeRO-2, or set beta = gamma = 0")
    # on full parameters: FSDP2 shards A, B, sigma by rows, and the Gram norms do not split into shard terms
    device = adapters[0].sigma.device
    sigmas = stacked_by_shape([full_tensor(a.sigma) for a in adapters])
    l2 = cast(torch.Tensor, sum(singular_value_penalty(s).to(device) for s in sigmas))  # a non-empty sum
    factors = [full_tensor(a.A) for a in adapters] + [full_tensor(a.B).mT for a in adapters]
    l3 = cast(torch.Tensor, sum(gram_distance(m, config.regularizer).sum().to(device)
                                for m in stacked_by_shape(factors)))
    layers = len(adapters) if config.reduction == "mean" else 1
    return RegularizationTerms(config.beta * l2 / layers, config.gamma * l3 / layers)


def regularization_loss(model: nn.Module) -> torch.Tensor:
    """``beta * L2 + gamma * L3`` of the active adapter: add it to the task loss."""
    return regularization_terms(model).total
