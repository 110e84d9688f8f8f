"""AdaLoRA (Zhang et al. 2023, arXiv 2303.10512) through PEFT: its config from a run's rank and length, and the
state a resumed run needs that PEFT does not save.

``target_r = r`` and ``init_r = round(1.5 r)`` (the paper starts from 1.5x the final rank budget); the budget stays
at ``init_r`` for the first ``tinit`` = 10% of the ``total_steps``, falls on a cubic schedule, and stays at ``r`` for
the final ``tfinal`` = 50% (the proportions of the paper's GLUE schedules). ``update_and_allocate`` runs after every
optimizer step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..core.files import read_json_object

INIT_RANK_FACTOR = 1.5
TINIT_FRACTION = 0.1
TFINAL_FRACTION = 0.5
SCORES = ("ipt", "exp_avg_ipt", "exp_avg_unc")  # the RankAllocator's importance averages
STATE_FILE = "adalora_resume_state.safetensors"
CHECKPOINT_FIX = "restore the checkpoint from a copy, or train the run again"

PeftModule = Any  # a PEFT AdaLoRA model


def adalora_config(r: int, total_steps: int, **common: Any):
    """PEFT's ``AdaLoraConfig`` for a final rank ``r`` over ``total_steps``; ``common`` holds the settings every
    PEFT baseline shares (alpha, dropout, targets, saved modules, task type)."""
    from peft import AdaLoraConfig

    return AdaLoraConfig(**common, target_r=r, init_r=round(INIT_RANK_FACTOR * r), total_step=total_steps,
                         tinit=int(TINIT_FRACTION * total_steps), tfinal=int(TFINAL_FRACTION * total_steps))


def save_adalora_state(model: PeftModule, directory: Path) -> None:
    """What resuming AdaLoRA needs beyond its saved adapter: the trainable parameters at their full rank (PEFT
    saves them pruned to the rank pattern) and the allocator's importance averages, which PEFT keeps in memory
    only. (The rank pattern itself is in ``adapter_config.json``.)"""
    from safetensors.torch import save_file

    allocator = model.base_model.rankallocator
    state = {f"{kind}/{name}": value for kind in SCORES for name, value in getattr(allocator, kind).items()}
    state.update({f"param/{name}": p for name, p in model.named_parameters() if p.requires_grad})
    save_file({key: value.detach().cpu().contiguous() for key, value in state.items()},
              str(directory / STATE_FILE), metadata={"format": "pt"})


def load_adalora_state(model: PeftModule, directory: str | os.PathLike) -> None:
    """Put back, in place, what `save_adalora_state` wrote, and the rank pattern of the checkpoint's config."""
    from safetensors.torch import load_file

    state = load_file(str(Path(directory) / STATE_FILE))
    allocator = model.base_model.rankallocator
    device = next(model.parameters()).device
    for kind in SCORES:
        prefix = f"{kind}/"
        setattr(allocator, kind, {key[len(prefix):]: value.to(device) for key, value in state.items()
                                  if key.startswith(prefix)})
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.copy_(state[f"param/{name}"])
    saved_config = read_json_object(Path(directory) / "adapter_config.json", CHECKPOINT_FIX)
    model.peft_config["default"].rank_pattern = saved_config.get("rank_pattern")
