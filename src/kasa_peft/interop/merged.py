"""Export a KaSA adapter merged into its base: a plain Hugging Face model directory.

Each targeted weight becomes ``W - us vt + scale B diag(sigma) A`` (core ``merge_and_unload``) and every
``modules_to_save`` module is replaced by the adapter's copy, so plain ``from_pretrained`` gives the
adapted model with no adapter library at all.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from torch import nn

from ..core import merge_and_unload, set_adapter
from .atomic import atomic_directory
from .base_model import adapted_model, base_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def export_merged(source: str | os.PathLike | nn.Module, out: str | os.PathLike,
                  base_model: nn.Module | str | os.PathLike | None = None, adapter_name: str | None = None,
                  label_names: Sequence[str] | None = None) -> Path:
    """Write ``source`` (a KaSA adapter directory or a model carrying one) merged into its base to ``out``.

    ``out`` is a complete model directory: the weights and config, the generation config when the base has
    one, the base's tokenizer when it has one, and ``id2label`` / ``label2id`` from ``label_names`` (the
    classes of a classifier's outputs). The merge runs on a copy (the given model, or the base, is left as
    it was; the copy costs one more model in memory). ``out`` must be new or empty; it is written atomically.
    Returns ``out``.
    """
    with atomic_directory(out) as staging, adapted_model(source, base_model, adapter_name) as (model, name):
        merged = cast("PreTrainedModel", copy.deepcopy(model))  # it has a config and save_pretrained
        set_adapter(merged, name)
        merge_and_unload(merged)
        if label_names:
            merged.config.id2label = dict(enumerate(label_names))
            merged.config.label2id = {label: i for i, label in enumerate(label_names)}
        merged.save_pretrained(str(staging))
        tokenizer = base_tokenizer(model)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(staging))
    return Path(out)
