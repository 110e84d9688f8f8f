"""Export a KaSA adapter as a plain PEFT LoRA adapter of rank r + d on the untouched base model.

KaSA changes each targeted weight by ``delta = scale B diag(sigma) A - us vt`` (update minus the ``d`` dropped
components), a rank-(r + d) matrix. PEFT's LoRA adds ``scaling * lora_B lora_A`` with
``scaling = lora_alpha / r'``. Writing ``r' = r + d``, ``lora_alpha = r + d`` (so ``scaling = 1`` exactly) and

    lora_A = [A; vt]                                  ((r + d) x in)
    lora_B = [B diag(scale sigma), -us]               (out x (r + d))

gives ``scaling * lora_B lora_A = delta``: any LoRA runtime (PEFT, vLLM, TGI, llama.cpp) applying it to the
original base computes exactly the KaSA model. Where ``d`` differs between layers (``drop_rank="auto"``), the
most common ``r + d`` is the config's ``r`` and ``lora_alpha``, and PEFT's ``rank_pattern`` / ``alpha_pattern``
give every other layer (by its escaped full name) its own ``r + d`` for both, so the scaling stays 1 everywhere.
``lora_dropout`` is written as 0: the exported pair is for inference (PEFT's dropout would also hit the truncation
half, which KaSA never drops out).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..core import KasaConfig
from .atomic import atomic_directory
from .base_model import export_base_name
from ..analysis.factors import delta_factors
from .peft_format import SavedAdapter, saved_adapter, write_peft_adapter


def lora_config_fields(ranks: dict[str, int]) -> dict:
    """The exported ``LoraConfig``'s ranks and scaling, from each layer's rank ``r + d``: ``lora_alpha`` equal to
    the rank everywhere (scaling 1); layers off the most common rank get it through ``rank_pattern`` and
    ``alpha_pattern`` (PEFT matches a pattern as a regular expression on a suffix of the module name)."""
    common = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {re.escape(name): rank for name, rank in ranks.items() if rank != common}
    return {"r": common, "lora_alpha": common, "rank_pattern": pattern, "alpha_pattern": dict(pattern),
            "lora_dropout": 0.0, "use_rslora": False}


def export_lora(source: str | os.PathLike | nn.Module, out: str | os.PathLike,
                base_model: nn.Module | str | os.PathLike | None = None, adapter_name: str | None = None,
                label_names: Sequence[str] | None = None) -> Path:
    """Write ``source`` (a KaSA adapter directory, or a model carrying KaSA adapters) as a PEFT LoRA to ``out``.

    A directory needs nothing else: every factor is in the adapter file. ``base_model`` is what the export
    names as its base (default: the one recorded in the adapter; a shortcut such as ``minilm`` is written as
    the real path); a base module instead is checked to fit the adapter. ``out`` must be new or empty; it
    is written atomically, with a model card (README.md) that lists ``label_names``, a classifier's classes,
    and passes them as ``id2label`` in its loading snippet. Returns ``out``.
    """
    with atomic_directory(out) as staging, saved_adapter(source, base_model, adapter_name) as adapter:
        write_peft_adapter(adapter, staging, lora_config_fields(layer_ranks(adapter)), lora_pair,
                           export_base_name(adapter, base_model), Path(out).resolve(), label_names)
    return Path(out)


def layer_ranks(adapter: SavedAdapter) -> dict[str, int]:
    """Each layer's exported rank ``r + d``: the rows of its ``A`` plus the columns of its ``dropped_us``."""
    return {name: adapter.tensors[f"{name}.A"].shape[0] + adapter.tensors[f"{name}.dropped_us"].shape[1]
            for name in adapter.metadata["layers"]}


def lora_pair(layer: dict[str, torch.Tensor], config: KasaConfig) -> dict[str, torch.Tensor]:
    """One layer's exported tensors by PEFT key: ``lora_A = [A; vt]``, ``lora_B = [B diag(scale sigma), -us]``."""
    lora_b, lora_a = delta_factors(**layer, scale=config.scale)
    return {"lora_A.weight": lora_a, "lora_B.weight": lora_b}
