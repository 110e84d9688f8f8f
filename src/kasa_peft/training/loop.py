"""For people who write their own PyTorch loop: KaSA's loss and the optimizer's parameter groups.

    loss = kasa_loss(model, model(**batch).loss)
    optimizer = torch.optim.AdamW(param_groups(model, lr=4e-4, head_lr=4e-3))
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn
from transformers.trainer_pt_utils import get_parameter_names

from ..core import kasa_state, regularization_loss
from ..core.config import matches
from .methods import classification_head_names, unwrap_peft

# transformers.Trainer.get_decay_parameter_names: no weight decay on biases and normalisation weights
NO_DECAY_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")


def kasa_loss(model: nn.Module, task_loss: torch.Tensor) -> torch.Tensor:
    """``task_loss + beta * L2 + gamma * L3``: the objective KaSA trains (see `kasa_peft.regularization_terms`)."""
    return task_loss + regularization_loss(model).to(task_loss.device)


def param_groups(model: nn.Module, lr: float, head_lr: float | None = None, weight_decay: float = 0.0,
                 head_modules: Collection[str] | None = None,
                 decay_names: Collection[str] | None = None) -> list[dict]:
    """Optimizer parameter groups of the trainable parameters: the head at ``head_lr``, the rest at ``lr``.

    The reference trains the classification head at its own ``head_lr`` and the adapter at ``module_lr``.
    Args:
        head_modules: modules whose parameters form the head (names or name suffixes); default: the
            ``modules_to_save`` of the active KaSA adapter, else the sequence classifier's head.
        decay_names: parameter names that get ``weight_decay``; default: all but biases and norm weights
            (``transformers.Trainer``'s rule).
    Each group has ``name`` (``"head"`` or ``"adapter"``), ``lr`` and ``weight_decay``; empty ones are left out.
    """
    heads = tuple(default_head_modules(model) if head_modules is None else head_modules)
    head_ids = {id(p) for name, module in model.named_modules() if heads and matches(name, heads)
                for p in module.parameters()}
    decay = set(decay_parameter_names(model) if decay_names is None else decay_names)
    groups: dict[tuple[str, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = "head" if id(param) in head_ids else "adapter"
        decays = name in decay
        group = groups.setdefault((part, decays), {
            "name": part, "params": [], "lr": head_lr if part == "head" and head_lr is not None else lr,
            "weight_decay": weight_decay if decays else 0.0,
        })
        group["params"].append(param)
    return list(groups.values())


def default_head_modules(model: nn.Module) -> tuple[str, ...]:
    """The active KaSA adapter's ``modules_to_save``, or else the sequence classifier's head."""
    try:
        state = kasa_state(model)
    except ValueError:  # not a KaSA model
        return classification_head_names(unwrap_peft(model))
    return state.configs[state.active].modules_to_save if state.active is not None else ()


def decay_parameter_names(model: nn.Module) -> list[str]:
    return get_parameter_names(model, [nn.LayerNorm], list(NO_DECAY_PATTERNS))
