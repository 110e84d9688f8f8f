"""Prefix tuning through PEFT: which models take it, and its generation under transformers 5.

PEFT's prefix tuning trains a learned key/value prefix per layer and runs only on causal LMs (for a sequence
classifier it needs a ``past_key_values`` argument that transformers 5 models no longer have, and an encoder has
no cache at all).

PEFT 0.21.2 hands the prefix to the model as ``past_key_values``; transformers 5 renamed that argument ``cache``
and, in ``generate``, passes its own empty ``cache`` too, which wins: the prefix is silently dropped and the model
generates as the base model. `generate_with_prefix` puts the prefix in ``cache`` at the first step (later steps
keep the cache that then holds it), so generation scores what the forward pass trained (checked token by token
in the tests).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def check_causal_lm(model: nn.Module) -> None:
    if type(model).__name__ not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        raise ValueError(f"method 'prefix' trains a key/value prefix, which PEFT feeds only to a causal LM, and "
                         f"{type(model).__name__} is not one (an encoder or a sequence classifier): choose another "
                         "method, or a causal-LM task")


def generate_with_prefix(peft_model: nn.Module) -> None:
    """Make a PEFT prefix-tuning model's ``generate`` use its prefix (module docstring); a no-op where the base
    model still takes ``past_key_values``."""
    peft: Any = peft_model  # a PeftModel: its attributes are PEFT's
    base = peft.get_base_model()
    if "cache" not in inspect.signature(base.forward).parameters:
        return
    peft.prepare_inputs_for_generation = _prefix_in_cache(peft.prepare_inputs_for_generation)


def _prefix_in_cache(prepare: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    def prepare_inputs(*args, **kwargs) -> dict[str, Any]:
        inputs = prepare(*args, **kwargs)
        prefix = inputs.pop("past_key_values", None)
        cache = inputs.get("cache")
        if prefix is not None and (cache is None or not cache.get_seq_length()):
            inputs["cache"] = prefix
        return inputs
    return prepare_inputs
