"""Which base weight an adapter was made for: a fingerprint of four numbers per layer, and how far the same weight
stored in another precision may move it."""

from __future__ import annotations

import functools

import torch
from torch import nn

from .quantized import quantized_support

# A base whose weights differ from the fingerprinted ones by more than this (relative to ||W||_F) is another
# model. Loose enough for a dtype change of the base (bf16 rounding is ~4e-3), tight enough for any other model.
# A quantized layer allows its scheme's tolerance instead (`QuantizedLinear.fingerprint_tolerance`): the adapter
# records the largest one of the base it was made on, and a load allows the larger of that and the new base's.
FINGERPRINT_TOLERANCE = 1e-2


def weight_fingerprint(weight: torch.Tensor) -> torch.Tensor:
    """Four float64 numbers that identify an (out, in) weight: ``||W||_F`` and three ``u_i^T W v_i``.

    ``u_i``, ``v_i`` are fixed cosine patterns, so the fingerprint costs one skinny matmul per layer. It covers
    the weight the layer computes with (dequantized for a quantized layer); quantization noise moves it by about
    the scheme's relative error, so an adapter made on a 4-bit base loads onto the full-precision base and the
    other way round (`fingerprint_tolerance`), while an unrelated model differs by O(1).
    """
    w = weight.detach().to(torch.float64)
    u = _cosine_patterns(w.shape[0], 0.37, 1, w.device)
    v = _cosine_patterns(w.shape[1], 0.61, 2, w.device)
    projections = ((w @ v) * u).sum(dim=0)
    return torch.cat([torch.linalg.matrix_norm(w).reshape(1), projections]).cpu()


def fingerprint_tolerance(layer: nn.Module) -> float:
    """The relative distance a fingerprint of ``layer``'s weight may have from that of the same weight stored in
    another precision: ``FINGERPRINT_TOLERANCE`` for a float weight, the scheme's for a quantized one."""
    support = quantized_support(layer)
    return max(FINGERPRINT_TOLERANCE, support.fingerprint_tolerance if support is not None else 0.0)


@functools.lru_cache(maxsize=32)
def _cosine_patterns(length: int, frequency: float, phase: int, device: torch.device) -> torch.Tensor:
    """Three columns ``cos(frequency (i + 1) j + phase i)``, j < length (cached: layers share shapes)."""
    positions = torch.arange(length, dtype=torch.float64, device=device)
    return torch.stack([torch.cos(frequency * (i + 1) * positions + phase * i) for i in range(3)], dim=1)
