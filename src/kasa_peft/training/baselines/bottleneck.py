"""The bottleneck adapter, and the two ways it joins a sublayer ``f``: after it (series) or beside it (parallel).

    delta(h) = W_up act(W_down LN(h) + b_down) + b_up
    series:    y = f(x) + delta(f(x))        parallel:  y = f(x) + delta(x)

``W_down`` (m x d) projects to a bottleneck of size m, ``W_up`` (d x m) back; ``W_up`` starts at zero, so the adapted
model starts as the base. ``LN`` (Lin et al. 2020's adapter only) is a LayerNorm of its own; the biases are
optional (the LLM-Adapters adapters have none). An adapter with both biases and no LayerNorm has ``2md + d + m``
parameters (Houlsby et al. 2019, section 2.1).

The adapter is a child of the module it adapts (named `ADAPTER`) and a forward hook adds its output, so the
base model keeps its module names and call signatures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers.activations import ACT2FN

ADAPTER = "bottleneck_adapter"


class BottleneckAdapter(nn.Module):
    """``delta(h)`` of the module docstring, from ``dim`` features (``out_dim``, default ``dim``, back)."""

    def __init__(self, dim: int, size: int, activation: str = "relu", bias: bool = True, layer_norm: bool = False,
                 out_dim: int | None = None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim) if layer_norm else nn.Identity()
        self.down = nn.Linear(dim, size, bias=bias)
        self.act = ACT2FN[activation]
        self.up = nn.Linear(size, out_dim or dim, bias=bias)
        nn.init.zeros_(self.up.weight)
        if bias:
            nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(self.norm(h))))


def attach(module: nn.Module, adapter: BottleneckAdapter, parallel: bool = False) -> None:
    """Add ``adapter`` to ``module``'s output: ``f(x) + delta(f(x))``, or ``f(x) + delta(x)`` with ``parallel``."""
    if hasattr(module, ADAPTER):
        raise ValueError(f"{type(module).__name__} already carries a bottleneck adapter")
    weight = next(module.parameters())
    module.add_module(ADAPTER, adapter.to(weight.device, weight.dtype))
    module.register_forward_hook(_beside if parallel else _after)


def _after(module: nn.Module, args: tuple, output: Any) -> Any:
    return _map_first(output, lambda h: h + getattr(module, ADAPTER)(h))


def _beside(module: nn.Module, args: tuple, output: Any) -> Any:
    return _map_first(output, lambda h: h + getattr(module, ADAPTER)(args[0]))


def _map_first(output: Any, change: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``change`` applied to a module's output: the tensor, or the first item of a tuple."""
    if isinstance(output, tuple):
        return (change(output[0]), *output[1:])
    return change(output)
