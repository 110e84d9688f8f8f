"""MiLoRA (Wang et al. 2024, arXiv 2406.09044) on PEFT's LoRA layers: PiSSA with the r *smallest* components.

With ``W = U S V^T`` and ``(U_d, S_d, V_d)`` the r minor triplets, ``A = sqrt(S_d / s) V_d^T``,
``B = U_d sqrt(S_d / s)`` and ``W <- W - s B A``, where ``s = alpha / r`` is PEFT's scaling, so the initial model
computes exactly the original (``s B A = U_d S_d V_d^T``). Saved as a plain LoRA of rank 2r on the *original*
base, as PEFT saves a converted PiSSA: ``s (B A - B_0 A_0) = s [B, -B_0] [A; A_0]`` with ``lora_alpha`` doubled
(same scaling), so PEFT or any LoRA runtime loads it without an SVD.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ..core import truncate_smallest
from ..core.layer import weight_matrix

PeftModule = Any  # a PEFT model or LoRA layer


def init_milora(layers: Iterable[tuple[str, PeftModule]]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Overwrite the factors of a fresh LoRA model's ``layers`` (name, layer) with MiLoRA's and remove them from
    the base; returns the initial ``(A_0, B_0)`` of each layer by name."""
    initial = {}
    for name, layer in layers:
        a, b = minor_factors(layer)
        with torch.no_grad():
            layer.lora_A["default"].weight.copy_(a)
            layer.lora_B["default"].weight.copy_(b)
        _subtract_from_base(layer, a, b)
        initial[name] = (a.detach().cpu().clone(), b.detach().cpu().clone())
    return initial


def save_milora_as_lora(model: PeftModule, directory: Path,
                        initial: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Write a MiLoRA model as a plain rank-2r LoRA of the original base (module docstring)."""
    from peft import get_peft_model_state_dict
    from peft.utils import SAFETENSORS_WEIGHTS_NAME
    from safetensors.torch import save_file

    weights = {key: value.detach().cpu() for key, value in get_peft_model_state_dict(model).items()}
    for name, (a0, b0) in initial.items():
        a_key, b_key = f"{name}.lora_A.weight", f"{name}.lora_B.weight"
        weights[a_key] = torch.cat([weights[a_key], a0.to(weights[a_key].dtype)], dim=0)
        weights[b_key] = torch.cat([weights[b_key], -b0.to(weights[b_key].dtype)], dim=1)
    config = dataclasses.replace(model.peft_config["default"], r=2 * model.peft_config["default"].r,
                                 lora_alpha=2 * model.peft_config["default"].lora_alpha, init_lora_weights=True)
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(directory))
    save_file({k: v.contiguous() for k, v in weights.items()}, str(directory / SAFETENSORS_WEIGHTS_NAME),
              metadata={"format": "pt"})


def trained_milora_factors(weights: dict[str, torch.Tensor], r: int) -> dict[str, torch.Tensor]:
    """The trained ``A`` (first r rows) and ``B`` (first r columns) of a saved rank-2r MiLoRA checkpoint."""
    def part(key: str, value: torch.Tensor) -> torch.Tensor:
        if key.endswith("lora_A.weight"):
            return value[:r]
        return value[:, :r] if key.endswith("lora_B.weight") else value
    return {key: part(key, value) for key, value in weights.items()}


def minor_factors(layer: PeftModule) -> tuple[torch.Tensor, torch.Tensor]:
    """MiLoRA's ``A = sqrt(S_d / s) V_d^T`` (r x in) and ``B = U_d sqrt(S_d / s)`` (out x r) of a PEFT LoRA layer.

    `truncate_smallest` gives ``U_d S_d V_d^T`` as two factors whose columns / rows are orthogonal, with
    ``S_d`` carried by either one; the norms split it into unit singular vectors and singular values.
    A zero singular value leaves its row of ``A`` and column of ``B`` zero (the product is still exact).
    """
    r, scaling = layer.r["default"], layer.scaling["default"]
    us, vt = truncate_smallest(weight_matrix(layer.get_base_layer()), r)
    left, right = us.norm(dim=0), vt.norm(dim=1)
    tiny = torch.finfo(us.dtype).tiny
    root = (left * right / scaling).sqrt()
    return (root / right.clamp_min(tiny))[:, None] * vt, us * (root / left.clamp_min(tiny))


def _subtract_from_base(layer: PeftModule, a: torch.Tensor, b: torch.Tensor) -> None:
    """``W <- W - s B A`` in float32, as PEFT's PiSSA does."""
    weight = weight_matrix(layer.get_base_layer())
    with torch.no_grad():
        weight.copy_((weight.float() - layer.scaling["default"] * b @ a).to(weight.dtype))
