"""Weighted combination of KaSA adapters (task arithmetic) that keeps the learned singular values.

For adapters ``i`` with weights ``w_i`` on one base, the combined change of a layer's original weight is

    delta_c = sum_i w_i * scale_i * B_i diag(sigma_i) A_i  -  U_t S_t V_t^T

the weighted sum of the updates, on top of ONE truncation: the dropped components of the adapter named
by ``truncation_from`` (default: the first one). The truncation is not weighted: it removes the base's
noisy tail once, and ``w * U_t S_t V_t^T`` with ``w != 1`` would put part of it back.

It is represented exactly as a KaSA adapter of rank ``R = sum_i r_i`` with ``alpha = R`` (scale 1):

    A_c = [A_1; A_2; ...],   B_c = [B_1, B_2, ...],   sigma_c = [w_1 scale_1 sigma_1, w_2 scale_2 sigma_2, ...]

and the dropped components ``us_t``, ``vt_t`` as they are (each layer keeps adapter ``t``'s ``d``; ``d = 0``
where ``t`` does not adapt the layer). A layer that adapter ``i`` does not adapt gets zero blocks for it.
PEFT's ``add_weighted_adapter`` (``"cat"``) builds ``sum_i w_i scale_i B_i A_i``: it drops ``sigma_i``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import torch
from torch import nn

from ..core import DroppedComponents, KasaLayer, inject, kasa_layers, kasa_state


def combine_adapters(model: nn.Module, weights: Mapping[str, float], adapter_name: str,
                     truncation_from: str | None = None) -> nn.Module:
    """Add adapter ``adapter_name`` = the weighted combination of the adapters in ``weights`` (see module doc).

    The new adapter becomes active. Adapters with ``modules_to_save`` cannot be combined (whole modules
    have no low-rank sum). Every check runs before the model is changed.
    """
    state = kasa_state(model)
    names = list(weights)
    truncation_from = truncation_from or (names[0] if names else None)
    unknown = sorted(cast("set[str]", {*names, truncation_from} - set(state.configs) - {None}))
    if not names or unknown:
        raise ValueError(f"cannot combine {names}: unknown adapters {unknown}; this model has {sorted(state.configs)}")
    assert truncation_from is not None  # names is not empty
    with_modules = [n for n in names if state.configs[n].modules_to_save]
    if with_modules:
        raise ValueError(f"adapters {with_modules} have modules_to_save, whose full copies have no weighted "
                         "low-rank combination; combine adapters without modules_to_save")
    ranks = {n: state.configs[n].r for n in names}
    rank = sum(ranks.values())
    involved = (*names, truncation_from)
    layers = [(n, layer) for n, layer in kasa_layers(model) if any(a in layer.adapters for a in involved)]
    source = state.configs[truncation_from]
    config = source.replace(r=rank, alpha=float(rank), use_rslora=False, learn_sigma=True,
                            drop_rank=source.r if source.drop_rank == "r" else source.drop_rank,
                            target_modules=tuple(n for n, _ in layers), exclude_modules=(), modules_to_save=())
    dropped = {n: truncation_of(layer, truncation_from) for n, layer in layers}
    inject(model, config, adapter_name, dropped=dropped)
    with torch.no_grad():
        for _, layer in layers:
            combined = layer.adapter(adapter_name)
            for name, block in _blocks(ranks).items():
                if name in layer.adapters:
                    part = layer.adapter(name)
                    combined.A[block] = part.A
                    combined.B[:, block] = part.B
                    combined.sigma[block] = weights[name] * part.scale * part.sigma
                    combined.sigma_init[block] = weights[name] * part.scale * part.sigma_init
                else:
                    combined.A[block], combined.B[:, block], combined.sigma[block] = 0.0, 0.0, 0.0
                    combined.sigma_init[block] = 0.0
    return model


def _blocks(ranks: dict[str, int]) -> dict[str, slice]:
    """Each adapter's rows of ``A_c`` (columns of ``B_c``), in order."""
    blocks, start = {}, 0
    for name, r in ranks.items():
        blocks[name] = slice(start, start + r)
        start += r
    return blocks


def truncation_of(layer: KasaLayer, adapter_name: str) -> DroppedComponents:
    """``adapter_name``'s dropped components of ``layer`` (none, ``d = 0``, if it does not adapt the layer)."""
    if adapter_name in layer.adapters:
        source = layer.adapter(adapter_name)
        return DroppedComponents(source.dropped_us.clone(), source.dropped_vt.clone())
    return DroppedComponents(torch.zeros(layer.out_features, 0), torch.zeros(0, layer.in_features))
