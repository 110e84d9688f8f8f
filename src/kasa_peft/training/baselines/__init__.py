"""The KaSA paper's other baselines that PEFT does not provide: bottleneck adapters, BitFit, FT-Top2 and DyLoRA.

One short module per idea (``bottleneck`` and ``adapters``, ``bitfit``, ``top_blocks``, ``dylora``;
``placement`` finds where they go; ``prefix`` holds what PEFT's prefix tuning needs here). Each is added to a
transformers model in place, with the base frozen; a run saves only the parameters it trains (`save_trained`), and
`load_trained_into` puts them back into a fresh base prepared the same way. `check_applies` refuses, before
anything changes, a method the model cannot take (BitFit without bias terms, prefix tuning on a model that is not
a causal LM, adapters without transformer blocks); it also runs on a model built on the meta device, so a run can
refuse before loading weights.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from .adapters import DESIGNS, add_adapters, check_adapters_fit
from .bitfit import check_has_biases, train_biases
from .dylora import RankSchedule, add_dylora
from .prefix import check_causal_lm, generate_with_prefix
from .top_blocks import check_has_blocks, train_top_blocks

OWN_METHODS = ("bitfit", *DESIGNS, "ft-top2", "dylora")
WEIGHTS_FILE = "baseline_model.safetensors"

__all__ = ["OWN_METHODS", "WEIGHTS_FILE", "RankSchedule", "check_applies", "generate_with_prefix", "load_trained_into",
           "prepare_own", "save_trained"]


def check_applies(model: nn.Module, method: str, heads: tuple[str, ...] = ()) -> None:
    """Raise a ValueError saying why, when ``method`` cannot train ``model`` (``heads``: its classifier head)."""
    if method == "bitfit":
        check_has_biases(model, heads)
    elif method in DESIGNS:
        check_adapters_fit(model, method)
    elif method == "ft-top2":
        check_has_blocks(model)
    elif method == "prefix":
        check_causal_lm(model)


def prepare_own(model: nn.Module, method: str, r: int, alpha: float, dropout: float,
                targets: tuple[str, ...] | str, heads: tuple[str, ...]) -> None:
    """Freeze ``model`` and add ``method`` to it in place (``r``: the bottleneck size or DyLoRA's largest rank);
    the ``heads`` modules train fully."""
    check_applies(model, method, heads)
    model.requires_grad_(False)
    if method == "bitfit":
        train_biases(model)
    elif method in DESIGNS:
        add_adapters(model, method, r)
    elif method == "ft-top2":
        train_top_blocks(model)
    else:
        add_dylora(model, targets, r, alpha, dropout)
    for head in heads:
        model.get_submodule(head).requires_grad_(True)


def save_trained(model: nn.Module, directory: str | os.PathLike) -> None:
    """Write the trainable parameters of ``model``, by name, to ``directory/WEIGHTS_FILE``."""
    from safetensors.torch import save_file

    Path(directory).mkdir(parents=True, exist_ok=True)
    weights = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}
    save_file(weights, str(Path(directory) / WEIGHTS_FILE), metadata={"format": "pt"})


def load_trained_into(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Copy the parameters `save_trained` wrote into ``model`` (prepared the same way), in place."""
    from safetensors.torch import load_file

    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {WEIGHTS_FILE}: it is not a run of a kasa-peft baseline")
    result = model.load_state_dict(load_file(str(path)), strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{path} holds parameters this model lacks ({', '.join(result.unexpected_keys[:3])}, ...): it "
                         "was trained on another base model or with other settings")
    return model
