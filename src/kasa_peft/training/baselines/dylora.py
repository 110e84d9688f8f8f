"""DyLoRA (Valipour et al. 2023): LoRA trained at a random rank each step, so that every truncation works.

For a frozen layer ``W`` and factors ``A`` (r x in, Kaiming-uniform) and ``B`` (out x r, zero), a training step
draws ``b`` uniformly from ``{1, ..., r}`` (one ``b`` for the whole model) and computes

    h = W x + (alpha / b) B[:, :b] A[:b, :] x

so the step trains the truncated factors ``A[:b]``, ``B[:, :b]`` (all of them: the paper's variant that updates
only the b-th row and column is not offered). Evaluation uses the full rank, ``h = W x + (alpha / r) B A x``. The
rank of step t comes from a generator seeded with ``(seed, t)``, so a resumed run draws the same ranks. Trainable
parameters: ``r (in + out)`` per adapted layer, as LoRA.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...core.config import ALL_LINEAR, matches
from .placement import is_linear, transformer_blocks

DYLORA = "dylora"


class DyLoraFactors(nn.Module):
    """``A``, ``B`` and the rank ``b`` in use for one adapted layer."""

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.r, self.alpha, self.rank = r, alpha, r
        self.A = nn.Parameter(torch.empty(r, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, r))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.rank if self.training else self.r
        return (self.alpha / b) * (self.dropout(x) @ self.A[:b].T @ self.B[:, :b].T)


def _add_update(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output + getattr(module, DYLORA)(args[0])


def add_dylora(model: nn.Module, targets: tuple[str, ...] | str, r: int, alpha: float, dropout: float) -> None:
    """Give each target linear layer (names or suffixes, a regular expression, or ``all-linear``: every linear
    layer of the transformer blocks) DyLoRA factors."""
    layers = [(name, m) for name, m in _candidates(model, targets) if isinstance(m, nn.Linear)]
    if not layers:
        raise ValueError(f"method 'dylora': no nn.Linear layer of {type(model).__name__} matches target modules "
                         f"{targets!r}; pass --target-modules naming its linear layers")
    for _, layer in layers:
        factors = DyLoraFactors(layer.in_features, layer.out_features, r, alpha, dropout)
        layer.add_module(DYLORA, factors.to(layer.weight.device, layer.weight.dtype))
        layer.register_forward_hook(_add_update)


def _candidates(model: nn.Module, targets: tuple[str, ...] | str):
    if targets == ALL_LINEAR:
        name, blocks = transformer_blocks(model)
        return [(f"{name}.{n}", m) for n, m in blocks.named_modules() if is_linear(m)]
    return [(name, m) for name, m in model.named_modules() if matches(name, targets)]


class RankSchedule:
    """Draws the rank of every training step and sets it on the model's DyLoRA layers."""

    def __init__(self, model: nn.Module, r: int, seed: int) -> None:
        self.factors = [m for m in model.modules() if isinstance(m, DyLoraFactors)]
        self.r, self.seed = r, seed

    def rank(self, step: int) -> int:
        """The rank ``b`` of optimizer step ``step`` (0-based), uniform in ``{1, ..., r}``."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return int(torch.randint(1, self.r + 1, (), generator=generator))

    def set_step(self, step: int) -> None:
        b = self.rank(step)
        for factors in self.factors:
            factors.rank = b
