"""Export a KaSA adapter as a plain PEFT LoRA adapter of rank 2r on the untouched base model.

KaSA changes each targeted weight by ``delta = scale B diag(sigma) A - us vt`` (update minus the dropped
components), a rank-2r matrix. PEFT's LoRA adds ``scaling * lora_B lora_A`` with ``scaling = lora_alpha / r'``.
Writing ``r' = 2r``, ``lora_alpha = 2r`` (so ``scaling = 1`` exactly) and

    lora_A = [A; vt]                                  (2r x in)
    lora_B = [B diag(scale sigma), -us]               (out x 2r)

gives ``scaling * lora_B lora_A = delta``: any LoRA runtime (PEFT, vLLM, TGI, llama.cpp) applying it to the
original base computes exactly the KaSA model. ``lora_dropout`` is written as 0: the exported pair is for
inference (PEFT's dropout would also hit the truncation half, which KaSA never drops out).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..core import KasaConfig
from .atomic import atomic_directory
from .base_model import export_base_name
from .factors import delta_factors
from .peft_format import saved_adapter, write_peft_adapter


def lora_config_fields(r: int) -> dict:
    """The exported ``LoraConfig``'s rank and scaling: rank ``2r`` and ``lora_alpha = 2r``, so scaling is 1."""
    return {"r": 2 * r, "lora_alpha": 2 * r, "lora_dropout": 0.0, "use_rslora": False}


def export_lora(source: str | os.PathLike | nn.Module, out: str | os.PathLike,
                base_model: nn.Module | str | os.PathLike | None = None, adapter_name: str | None = None) -> Path:
    """Write ``source`` (a KaSA adapter directory, or a model carrying KaSA adapters) as a PEFT LoRA to ``out``.

    A directory needs nothing else: every factor is in the adapter file. ``base_model`` is what the export
    names as its base (default: the one recorded in the adapter; a shortcut such as ``minilm`` is written as
    the real path); a base module instead is checked to fit the adapter. ``out`` must be new or empty; it
    is written atomically. Returns ``out``.
    """
    with atomic_directory(out) as staging, saved_adapter(source, base_model, adapter_name) as adapter:
        write_peft_adapter(adapter, staging, lora_config_fields(adapter.config.r), lora_pair,
                           export_base_name(adapter, base_model))
    return Path(out)


def lora_pair(layer: dict[str, torch.Tensor], config: KasaConfig) -> dict[str, torch.Tensor]:
    """One layer's exported tensors by PEFT key: ``lora_A = [A; vt]``, ``lora_B = [B diag(scale sigma), -us]``."""
    lora_b, lora_a = delta_factors(**layer, scale=config.scale)
    return {"lora_A.weight": lora_a, "lora_B.weight": lora_b}
