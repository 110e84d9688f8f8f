"""Refuse a method that cannot apply to a model before its weights are loaded.

The model is built from its ``config.json`` on the meta device (no weights, no memory) and the method's own check
(`kasa_peft.training.baselines.check_applies`) runs on it: BitFit needs bias terms, prefix tuning a causal LM,
the adapters and FT-Top2 transformer blocks. A model whose config cannot be read without its weights (a hub id,
or a GGUF file not yet converted: reading a GGUF header parses its whole tokenizer, tens of seconds) is checked by
`prepare_model` instead, right after loading and before any change.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from ..models import gguf_cache_dir, resolve_model_path
from ..training.baselines import OWN_METHODS, check_applies
from ..training.methods import classification_head_names

CHECKED = (*OWN_METHODS, "prefix")
_AUTO = {"causal_lm": AutoModelForCausalLM, "sequence_classification": AutoModelForSequenceClassification}


def check_method_fits_model(method: str, model_spec: str, model_task: str) -> None:
    """Raise the method's one-line error when ``method`` cannot train ``model_spec`` for ``model_task``."""
    if method not in CHECKED:
        return
    config_dir = _config_dir(model_spec)
    if config_dir is None:
        return
    with torch.device("meta"):
        skeleton = _AUTO[model_task].from_config(AutoConfig.from_pretrained(config_dir))
    check_applies(skeleton, method, classification_head_names(skeleton))


def _config_dir(model_spec: str) -> str | None:
    """A local directory holding the model's ``config.json``, or ``None``."""
    source = resolve_model_path(model_spec)
    if source.kind == "local_dir":
        return source.path
    if source.kind == "gguf":
        converted = gguf_cache_dir(source.gguf_path)
        return str(converted) if (converted / "config.json").is_file() else None
    return None
