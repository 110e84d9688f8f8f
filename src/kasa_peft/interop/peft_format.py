"""Writing and reading adapters in PEFT's LoRA directory layout.

PEFT saves ``adapter_config.json`` (a ``LoraConfig``) and ``adapter_model.safetensors`` whose keys are
``base_model.model.<module>.lora_A.weight`` / ``.lora_B.weight`` (``.lora_diag`` for KaSA) and, for
``modules_to_save``, ``base_model.model.<module>.<param>`` (the adapter name is not part of any key).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..core import KasaAdapter, KasaLayer, ModulesToSave, kasa_layers
from ..core.config import matches
from ..core.io import base_model_name
from ..core.layer import is_transposed
from ..core.model import saved_modules

PEFT_PREFIX = "base_model.model."
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def require_peft():
    """The ``peft`` module (imported on first use: it is only needed for PEFT formats)."""
    try:
        import peft
    except ImportError:
        raise ImportError("PEFT formats need the peft package: pip install 'kasa-peft[baselines]' "
                          "(peft 0.21.2 or newer)") from None
    return peft


def original_module_names(model: nn.Module) -> list[str]:
    """The model's module names as in the original model (the insides of KaSA wrappers left out)."""
    names, wrappers = [], []
    for name, module in model.named_modules():
        if any(name.startswith(w + ".") for w in wrappers):
            continue
        names.append(name)
        if isinstance(module, (KasaLayer, ModulesToSave)):
            wrappers.append(name)
    return names


def target_suffixes(module_names: Sequence[str], adapted: Sequence[str]) -> list[str]:
    """For each adapted name, its shortest dotted suffix that matches no other module of ``module_names``.

    PEFT matches ``target_modules`` entries as whole names or dotted suffixes (the rule of our
    ``KasaConfig``), so the suffixes select exactly ``adapted``: BERT's ``...attention.self.query`` layers
    become ``query``, and GPT-2's ``attn.c_proj`` stays apart from an unadapted ``mlp.c_proj``.
    """
    others = [n for n in module_names if n not in set(adapted)]
    suffixes = set()
    for name in adapted:
        parts = name.split(".")
        candidates = (".".join(parts[-depth:]) for depth in range(1, len(parts) + 1))
        suffixes.add(next((s for s in candidates if not any(matches(o, (s,)) for o in others)), name))
    return sorted(suffixes)


def adapted_layers(model: nn.Module, adapter_name: str) -> list[tuple[str, KasaLayer]]:
    return [(name, layer) for name, layer in kasa_layers(model) if adapter_name in layer.adapters]


def write_peft_adapter(model: nn.Module, adapter_name: str, out: Path, config_fields: dict[str, Any],
                       layer_tensors: Callable[[KasaAdapter], dict[str, torch.Tensor]]) -> None:
    """Write one KaSA adapter of ``model`` into directory ``out`` in PEFT's LoRA layout.

    ``config_fields`` are the ``LoraConfig`` fields specific to the format (rank, alpha, ...); the
    targets, ``modules_to_save``, ``fan_in_fan_out`` (Conv1D layers) and base model name are filled in
    here. ``layer_tensors`` gives each layer's tensors by PEFT's key suffix (``lora_A.weight``, ...).
    """
    peft = require_peft()
    layers = adapted_layers(model, adapter_name)
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in layers:
        for key, value in layer_tensors(layer.adapters[adapter_name]).items():
            tensors[f"{PEFT_PREFIX}{name}.{key}"] = value
    modules = []
    for name, wrapper in saved_modules(model):
        if adapter_name in wrapper.copies:
            modules.append(name)
            for key, value in wrapper.copies[adapter_name].state_dict().items():
                tensors[f"{PEFT_PREFIX}{name}.{key}"] = value
    config = peft.LoraConfig(
        target_modules=target_suffixes(original_module_names(model), [name for name, _ in layers]),
        modules_to_save=modules or None,
        fan_in_fan_out=any(is_transposed(layer.base_layer) for _, layer in layers),
        base_model_name_or_path=base_model_name(model),
        inference_mode=True,
        **config_fields,
    )
    config.save_pretrained(str(out))
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(out / WEIGHTS_NAME),
              metadata={"format": "pt"})


def read_peft_adapter(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The ``adapter_config.json`` dict and the tensors of a PEFT adapter directory (prefix stripped)."""
    path = Path(path)
    config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    if not config_file.is_file() or not weights_file.is_file():
        raise FileNotFoundError(f"{path} is not a PEFT adapter directory: it needs {CONFIG_NAME} and {WEIGHTS_NAME} "
                                "(adapters saved as .bin are not supported; re-save them with safetensors)")
    try:
        config = json.loads(config_file.read_text())
        tensors = load_file(str(weights_file))
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError) as err:
        raise ValueError(f"{path} holds a corrupt PEFT adapter ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_file} is not a PEFT adapter config (expected a JSON object)")
    return config, {k.removeprefix(PEFT_PREFIX): v for k, v in tensors.items()}
