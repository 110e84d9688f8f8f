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
    example = "pass --target-modules naming the linear layers to adapt (e.g. q_proj,v_proj, or all-linear)"
    try:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults
    except ImportError:
        raise ValueError(f"the default target modules come from PEFT's table and peft is not installed: {example}, "
                         "or `pip install peft`") from None
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in defaults:
        raise ValueError(f"no default target modules are known for model type {model_type!r}: {example}")
    targets = list(defaults[model_type])
    if family == "commonsense" and targets == ["q_proj", "v_proj"]:
        return COMMONSENSE_TARGETS
    return targets
