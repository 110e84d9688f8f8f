"""Which layers to adapt when ``--target-modules`` is not given.

PEFT's per-architecture LoRA defaults (BERT/RoBERTa ``query,value``, Llama ``q_proj,v_proj``, GPT-2
``c_attn``, ...), except for commonsense reasoning on Llama-style models, where the paper (after
LLM-Adapters) adapts ``q_proj, k_proj, v_proj, up_proj, down_proj``.
"""

from __future__ import annotations

from torch import nn

COMMONSENSE_TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]


def default_target_modules(model: nn.Module, family: str) -> list[str]:
    """The default layers to adapt for this model and task family."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    defaults = _peft_defaults()
    if model_type not in defaults:
        raise ValueError(f"no default target modules are known for model type {model_type!r}: pass --target-modules "
                         "with the names of the linear layers to adapt (e.g. --target-modules q_proj,v_proj), or "
                         "'all-linear'")
    targets = list(defaults[model_type])
    if family == "commonsense" and targets == ["q_proj", "v_proj"]:
        return COMMONSENSE_TARGETS
    return targets


def _peft_defaults() -> dict[str, list[str]]:
    try:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    except ImportError:
        return {}
    return TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
