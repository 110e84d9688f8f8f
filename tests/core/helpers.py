"""Independent expectations for the core tests: float64 SVD truncation, relative errors, tiny training."""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import kasa_peft


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected||_F / ||expected||_F`` in float64."""
    actual, expected = actual.detach().double(), expected.detach().double()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-300)).item()


def dropped_product(weight: torch.Tensor, r: int) -> torch.Tensor:
    """``U_d S_d V_d^T``, the ``r`` smallest singular components of ``weight`` (out x in), by float64 full SVD."""
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    return (u[:, -r:] * s[-r:]) @ vh[-r:]


def matching_linears(model: nn.Module, suffixes: tuple[str, ...]) -> dict[str, nn.Module]:
    """The nn.Linear / Conv1D modules named ``suffix`` or ``<parents>.suffix``, found without the library."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, Conv1D)) and any(name == s or name.endswith("." + s) for s in suffixes)}


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The (out, in) weight of an nn.Linear, or of a transformers Conv1D (stored as (in, out))."""
    return module.weight if isinstance(module, nn.Linear) else module.weight.T


def truncated_copy(model: nn.Module, suffixes: tuple[str, ...], r: int) -> nn.Module:
    """A copy of ``model`` whose targeted weights are replaced by ``W - U_d S_d V_d^T`` (float64 SVD)."""
    truncated = copy.deepcopy(model)
    with torch.no_grad():
        for module in matching_linears(truncated, suffixes).values():
            weight = linear_weight(module)
            weight.copy_((weight.double() - dropped_product(weight, r)).to(weight.dtype))
    return truncated


def outputs(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(batch).logits


def randomize_updates(model: nn.Module, seed: int = 0) -> None:
    """Give every adapter a non-zero ``B`` (as after training) so the update shows in the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in kasa_peft.kasa_layers(model):
            for adapter in layer.adapters.values():
                adapter.B.copy_(0.1 * torch.randn(adapter.B.shape, generator=generator))


def train_steps(model: nn.Module, batch: torch.Tensor, steps: int = 3, lr: float = 1e-2) -> None:
    """A few AdamW steps on a dummy loss plus the KaSA regulariser, so that ``B != 0``."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        loss = model(batch).logits.pow(2).mean() + kasa_peft.regularization_loss(model)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
