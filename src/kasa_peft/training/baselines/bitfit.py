"""BitFit (Ben Zaken et al. 2022): train the bias terms only.

Every parameter named ``bias`` trains (those of the attention and MLP projections and of the LayerNorms); the
weights stay frozen. A model without bias terms (Llama-style, e.g. SmolLM2) cannot be trained this way.
"""

from __future__ import annotations

from torch import nn


def bias_names(model: nn.Module, heads: tuple[str, ...] = ()) -> list[str]:
    """The bias terms of ``model`` outside the modules in ``heads``."""
    return [name for name, _ in model.named_parameters()
            if name.rsplit(".", 1)[-1] == "bias" and not name.startswith(tuple(f"{h}." for h in heads))]


def check_has_biases(model: nn.Module, heads: tuple[str, ...] = ()) -> None:
    if not bias_names(model, heads):
        raise ValueError(f"method 'bitfit' trains bias terms only, and {type(model).__name__} has none (its layers "
                         "are bias-free, as Llama-style models are): choose another method")


def train_biases(model: nn.Module) -> None:
    """Make every bias term of ``model`` trainable."""
    for name, param in model.named_parameters():
        if name.rsplit(".", 1)[-1] == "bias":
            param.requires_grad_(True)
