"""An adapted transformers model saves its KaSA adapter, never a whole model that loads broken.

``model.save_pretrained(DIR)``, which ``transformers.Trainer`` and TRL's trainers call for ``save_model`` and every
checkpoint, would write the adapted model's whole state dict: keys such as ``...q_proj.base_layer.weight`` and
``...q_proj.adapters.default.A`` that ``from_pretrained`` does not know, so it would load that folder with the
adapted layers initialised at random, without an error. So ``kasa_peft.inject`` (and ``load_adapter``) give each
adapted transformers model its own ``save_pretrained`` (`on_adapted`): it writes the active adapter, as
``kasa_peft.save_adapter`` does, and ``kasa_peft_method.json``, which ``load_adapter``, ``kasa-peft export`` and
``kasa-peft eval --adapter`` read. ``from_pretrained`` on that folder fails loudly (it holds no model).
A model whose adapters were removed (``unload``, ``merge_and_unload``) saves as transformers does.

A Trainer that is not KaSA-aware also trains without KaSA's regulariser; its first save warns about that and names
the trainers that add it.
"""

from __future__ import annotations

import os
import types
import warnings
from typing import Any, cast

from torch import nn

from ..core import kasa_state, save_adapter
from ..core.model import STATE_ATTRIBUTE
from ..training.methods import kasa_method_spec, write_method_file

UNREGULARISED_TRAINER = (
    "a Trainer that is not KaSA-aware saved this KaSA model to {directory} (the KaSA adapter was written there, not "
    "the whole model), and it trains without KaSA's regulariser (beta * L2 + gamma * L3): train with "
    "kasa_peft.integrations.trl.KasaSFTTrainer / KasaDPOTrainer, or with a trainer class that lists "
    "kasa_peft.training.KasaTrainerMixin among its bases")


def on_adapted(model: nn.Module) -> None:
    """Give ``model`` (adapted by KaSA just now) the ``save_pretrained`` of this module, once."""
    if "save_pretrained" not in vars(model):
        cast(Any, model).save_pretrained = types.MethodType(save_pretrained, model)


def save_pretrained(model: nn.Module, save_directory: str | os.PathLike, *args, **kwargs) -> None:
    """Write ``model``'s active KaSA adapter and its method record to ``save_directory`` (from the main process:
    transformers' ``is_main_process``); without KaSA adapters, transformers' own ``save_pretrained``."""
    if getattr(model, STATE_ATTRIBUTE, None) is None:
        cast(Any, type(model)).save_pretrained(model, save_directory, *args, **kwargs)  # a transformers model
        return
    if not kwargs.get("is_main_process", True):
        return
    state = kasa_state(model)
    if state.active is None:
        raise ValueError(f"this model holds the KaSA adapters {sorted(state.configs)} and none is active, so "
                         f"save_pretrained cannot tell which to write to {save_directory}: call "
                         "kasa_peft.set_adapter(model, NAME) first, or save each with kasa_peft.save_adapter")
    save_adapter(model, save_directory)
    write_method_file(save_directory, kasa_method_spec(state.configs[state.active]))
    if "state_dict" in kwargs:  # transformers.Trainer._save passes it; KaSA-aware trainers never call save_pretrained
        warnings.warn(UNREGULARISED_TRAINER.format(directory=save_directory), stacklevel=2)
