"""Writing and reading adapters in PEFT's LoRA directory layout.

PEFT saves ``adapter_config.json`` (a ``LoraConfig``) and ``adapter_model.safetensors`` whose keys are
``base_model.model.<module>.lora_A.weight`` / ``.lora_B.weight`` (``.lora_diag`` for KaSA) and, for
``modules_to_save``, ``base_model.model.<module>.<param>`` (the adapter name is not part of any key).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..core import KasaConfig, KasaLayer, ModulesToSave, read_adapter
from ..core.config import matches
from ..core.io import adapter_contents
from ..core.model import CLASSIFICATION_HEADS
from .base_model import adapted_model
from .model_card import write_model_card

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
    names: list[str] = []
    wrappers: list[str] = []
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


@dataclass(frozen=True)
class SavedAdapter:
    """One adapter in the form ``save_adapter`` writes (``metadata``, ``tensors``), and what is known of its base.

    ``module_names`` are the base's module names when a model is at hand (``None``: only the adapter file).
    """

    metadata: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    module_names: list[str] | None = None

    @property
    def config(self) -> KasaConfig:
        return KasaConfig.from_dict(self.metadata["config"])

    def layer(self, name: str) -> dict[str, torch.Tensor]:
        """``A``, ``B``, ``sigma``, ``dropped_us``, ``dropped_vt`` of one adapted layer."""
        return {key: self.tensors[f"{name}.{key}"] for key in ("A", "B", "sigma", "dropped_us", "dropped_vt")}

    def saved_module(self, name: str) -> dict[str, torch.Tensor]:
        prefix = f"modules_to_save.{name}."
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    @property
    def is_classifier(self) -> bool:
        """Whether it trained a classification head (``classifier`` / ``score``, as transformers names them)."""
        return any(name.rsplit(".", 1)[-1] in CLASSIFICATION_HEADS for name in self.metadata["modules_to_save"])


@contextmanager
def saved_adapter(source: str | os.PathLike | nn.Module, base_model: nn.Module | str | os.PathLike | None = None,
                  adapter_name: str | None = None) -> Iterator[SavedAdapter]:
    """The adapter an export writes: read from a directory (nothing else is needed, every factor is in the
    file), or taken from a model: ``source`` itself, or the directory's adapter loaded onto a ``base_model``
    module (which checks that it fits)."""
    if not isinstance(source, nn.Module) and not isinstance(base_model, nn.Module):
        yield SavedAdapter(*read_adapter(source))
        return
    with adapted_model(source, base_model, adapter_name) as (model, name):
        yield SavedAdapter(*adapter_contents(model, name), original_module_names(model))


def write_peft_adapter(adapter: SavedAdapter, out: Path, config_fields: dict[str, Any],
                       layer_tensors: Callable[[dict[str, torch.Tensor], KasaConfig], dict[str, torch.Tensor]],
                       base_model_name_or_path: str | None, location: Path,
                       label_names: Sequence[str] | None = None) -> None:
    """Write ``adapter`` into directory ``out`` in PEFT's LoRA layout, with its model card (`write_model_card`:
    the export will live at ``location``; ``label_names`` are a classifier's classes).

    ``config_fields`` are the ``LoraConfig`` fields specific to the format (rank, alpha, ...); the targets,
    ``modules_to_save``, ``fan_in_fan_out`` (Conv1D layers), ``task_type`` (``SEQ_CLS`` for an adapter with a
    trained classifier, else ``CAUSAL_LM``) and the base are filled in here. ``layer_tensors`` gives a layer's
    tensors by PEFT's key suffix (``lora_A.weight``, ...) from its saved ones. Targets are the shortest
    unambiguous suffixes when the base's module names are known, else the full layer names.
    """
    peft = require_peft()
    layers = list(adapter.metadata["layers"])
    config = adapter.config
    tensors: dict[str, torch.Tensor] = {}
    for name in layers:
        for key, value in layer_tensors(adapter.layer(name), config).items():
            tensors[f"{PEFT_PREFIX}{name}.{key}"] = value
    modules = adapter.metadata["modules_to_save"]
    for name in modules:
        for key, value in adapter.saved_module(name).items():
            tensors[f"{PEFT_PREFIX}{name}.{key}"] = value
    task_type = "SEQ_CLS" if adapter.is_classifier else "CAUSAL_LM"
    targets = target_suffixes(adapter.module_names, layers) if adapter.module_names is not None else sorted(layers)
    peft_config = peft.LoraConfig(
        target_modules=targets, modules_to_save=modules or None,
        fan_in_fan_out=bool(adapter.metadata.get("fan_in_fan_out", False)),
        base_model_name_or_path=base_model_name_or_path or None,
        task_type=task_type,
        inference_mode=True,
        **config_fields,
    )
    peft_config.save_pretrained(str(out))
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(out / WEIGHTS_NAME),
              metadata={"format": "pt"})
    method = "KaSA" if "kasa_config" in config_fields else "LoRA"
    write_model_card(out, location, base_model_name_or_path, task_type, method, label_names)


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
