"""PEFT's own KaSA layout (``LoraConfig(kasa_config=...)``, ``lora_diag`` keys): export and import.

PEFT stores only ``lora_A = A``, ``lora_B = B``, ``lora_diag = sigma`` and recomputes the truncation from
the base weight (float32 SVD) every time it loads the adapter; its forward is the same
``W_world x + scaling * B diag(lora_diag) A x`` with ``scaling = lora_alpha / r``. Differences that do not
affect outputs: PEFT sums the regularisers over layers in the paper's r x r form (imported adapters get
``regularizer="paper", reduction="sum"``); exported ones keep beta and gamma as they are. PEFT's KaSA
refuses Conv1D (GPT-2) layers, and always drops ``r`` components: export those, and adapters with another
``drop_rank``, with ``export_lora``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models import head_size
from ..core import KasaConfig, inject, kasa_layers, save_adapter
from ..core.config import matches
from ..core.model import saved_modules
from .atomic import atomic_directory
from ..core.model import temporary_adapter
from .base_model import export_base_name, resolve_base_model
from .peft_format import read_peft_adapter, require_peft, saved_adapter, write_peft_adapter

# LoraConfig options with no KaSA counterpart here, and the value meaning "not used".
UNSUPPORTED_OPTIONS = {
    "use_dora": False, "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None,
    "layer_replication": None, "target_parameters": None, "trainable_token_indices": None, "bias": "none",
    "lora_bias": False,
}


def export_peft_kasa(source: str | os.PathLike | nn.Module, out: str | os.PathLike,
                     base_model: nn.Module | str | os.PathLike | None = None, adapter_name: str | None = None,
                     label_names: Sequence[str] | None = None) -> Path:
    """Write ``source`` (a KaSA adapter directory or a model carrying one) in PEFT's KaSA layout to ``out``.

    Arguments as ``export_lora``. Raises for Conv1D (GPT-2) layers, which PEFT's KaSA does not support.
    """
    peft = require_peft()
    with atomic_directory(out) as staging, saved_adapter(source, base_model, adapter_name) as adapter:
        if adapter.metadata.get("fan_in_fan_out"):
            raise ValueError(f"PEFT's KaSA does not support Conv1D layers ({next(iter(adapter.metadata['layers']))}, "
                             "...): export this adapter with --format lora (export_lora), an exact rank-(r + d) "
                             "LoRA any PEFT version loads")
        config = adapter.config
        other = {name: d for name in adapter.metadata["layers"]
                 if (d := adapter.tensors[f"{name}.dropped_us"].shape[1]) != config.r}
        if other:
            first = next(iter(other))
            raise ValueError(f"PEFT's KaSA always drops r={config.r} components per weight, and this adapter drops "
                             f"d={other[first]} at {first} ({len(other)} layers differ; drop_rank="
                             f"{config.drop_rank!r}): export it with --format lora (export_lora), an exact LoRA of "
                             "rank r + d per layer that any PEFT version loads")
        fields = {"r": config.r, "lora_alpha": config.alpha, "lora_dropout": config.dropout,
                  "use_rslora": config.use_rslora,
                  "kasa_config": peft.KasaConfig(beta=config.beta, gamma=config.gamma)}
        write_peft_adapter(adapter, staging, fields, peft_kasa_tensors, export_base_name(adapter, base_model),
                           Path(out).resolve(), label_names)
    return Path(out)


def peft_kasa_tensors(layer: dict[str, torch.Tensor], config: KasaConfig) -> dict[str, torch.Tensor]:
    return {"lora_A.weight": layer["A"].detach(), "lora_B.weight": layer["B"].detach(),
            "lora_diag": layer["sigma"].detach()}


def kasa_config_from_peft(peft_config: dict[str, Any], module_names: list[str]) -> KasaConfig:
    """Our ``KasaConfig`` for a PEFT KaSA ``adapter_config.json``; raises for options we cannot represent.

    ``modules_to_save`` keeps the entries that name a module of the base (PEFT's sequence-classification
    task type lists both ``classifier`` and ``score``).
    """
    used = {k: peft_config[k] for k, unused in UNSUPPORTED_OPTIONS.items() if peft_config.get(k) not in (unused, None)}
    if used:
        raise ValueError(f"the PEFT adapter uses options that KaSA in kasa-peft does not support: {used}")
    target_modules = peft_config.get("target_modules")
    if not target_modules:
        raise ValueError("the PEFT adapter config names no target_modules")
    kasa = peft_config["kasa_config"]
    if not isinstance(kasa, dict):
        raise ValueError(f"kasa_config is {kasa!r}, not a mapping of KaSA settings (beta, gamma)")
    if "r" not in peft_config:
        raise ValueError("the config has no rank r")
    saved = peft_config.get("modules_to_save") or []
    if not isinstance(saved, list) or not all(isinstance(m, str) for m in saved):
        raise ValueError(f"modules_to_save is {saved!r}, not a list of module names")
    return KasaConfig(
        r=peft_config["r"], alpha=peft_config.get("lora_alpha", 8), dropout=peft_config.get("lora_dropout") or 0.0,
        target_modules=target_modules, exclude_modules=peft_config.get("exclude_modules") or (),
        modules_to_save=tuple(m for m in saved if any(matches(n, (m,)) for n in module_names)),
        beta=kasa.get("beta", 1e-4), gamma=kasa.get("gamma", 1e-3),
        regularizer="paper", reduction="sum", use_rslora=peft_config.get("use_rslora") or False,
    )


def read_peft_kasa(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A PEFT adapter directory that must be a KaSA one (LoRA with ``kasa_config``)."""
    peft_config, tensors = read_peft_adapter(path)
    if peft_config.get("format") == "kasa-peft":
        raise ValueError(f"{path} is already a kasa-peft adapter: load it with kasa_peft.load_adapter")
    if peft_config.get("peft_type") != "LORA" or not peft_config.get("kasa_config"):
        kind = peft_config.get("peft_type", "unknown")
        raise ValueError(f"{path} is not a PEFT KaSA adapter (peft_type {kind!r}, kasa_config "
                         f"{peft_config.get('kasa_config')!r}); only LoraConfig(kasa_config=KasaConfig(...)) "
                         "adapters can be imported")
    return peft_config, tensors


def import_peft_kasa(peft_dir: str | os.PathLike, base_model: nn.Module | str | os.PathLike | None,
                     out: str | os.PathLike, adapter_name: str = "default") -> Path:
    """Convert a PEFT KaSA adapter directory into a kasa-peft adapter directory ``out``.

    The dropped components are computed once from the original base (``base_model``, or the PEFT
    config's ``base_model_name_or_path``; a spec such as a path or ``minilm``, loaded as a sequence
    classifier for a ``SEQ_CLS`` adapter) and stored, so loading the result computes no SVD. The base
    must be the untouched original (not one PEFT has already truncated). A given ``base_model`` module
    is left as it was. ``out`` must be new or empty; it is written atomically.
    """
    peft_config, tensors = read_peft_kasa(peft_dir)
    config_file = Path(peft_dir) / "adapter_config.json"
    try:  # the values are checked before the base is loaded, with the module names the adapter itself uses
        kasa_config_from_peft(peft_config, [])
    except ValueError as err:
        raise ValueError(f"{config_file}: {err}; fix the config or export the adapter from PEFT again"
                         .replace("invalid KasaConfig: ", "")) from None
    heads = tuple(f"{name}." for name in peft_config.get("modules_to_save") or [])
    num_labels = head_size(tensors, heads) if peft_config.get("task_type") == "SEQ_CLS" and heads else None
    base_name = peft_config.get("base_model_name_or_path") or ""
    with atomic_directory(out) as staging:
        model = resolve_base_model(base_model, base_name if isinstance(base_name, str) else "", num_labels)
        config = kasa_config_from_peft(peft_config, [n for n, _ in model.named_modules()])

        def attach(target: nn.Module, name: str) -> None:
            inject(target, config, name)
            copy_peft_tensors(target, name, tensors, peft_dir)

        with temporary_adapter(model, attach, adapter_name) as name:
            save_adapter(model, staging, name)
    return Path(out)


@torch.no_grad()
def copy_peft_tensors(model: nn.Module, name: str, tensors: dict[str, torch.Tensor], source) -> None:
    """Copy PEFT's ``lora_A``/``lora_B``/``lora_diag`` and ``modules_to_save`` into adapter ``name`` (its
    ``sigma_init`` becomes unknown, NaN).

    Raises (naming the mismatch) when the layers or shapes differ from what the adapter holds: it was
    made for another base model.
    """
    layers = dict(kasa_layers(model))
    adapted = {n for n, layer in layers.items() if name in layer.adapters}
    in_file = {k.rsplit(".", 2)[0] for k in tensors if k.endswith(".lora_A.weight")}
    if adapted != in_file:
        raise ValueError(f"{source} was made for a different base model: it adapts {sorted(in_file - adapted)[:3]} "
                         f"and not {sorted(adapted - in_file)[:3]} of the layers its config selects here")
    for layer_name in sorted(adapted):
        adapter = layers[layer_name].adapter(name)
        for ours, theirs in (("A", "lora_A.weight"), ("B", "lora_B.weight"), ("sigma", "lora_diag")):
            key, target = f"{layer_name}.{theirs}", getattr(adapter, ours)
            if key not in tensors or tensors[key].shape != target.shape:
                found = tuple(tensors[key].shape) if key in tensors else "missing"
                raise ValueError(f"{source} was made for a different base model: tensor {key} is {found}, "
                                 f"expected {tuple(target.shape)} for this base")
            target.copy_(tensors[key])
        adapter.sigma_init.fill_(float("nan"))  # PEFT does not record where lora_diag started
    for module_name, wrapper in saved_modules(model):
        if name in wrapper.copies:
            prefix = f"{module_name}."
            saved = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            expected = {k: tuple(v.shape) for k, v in wrapper.copies[name].state_dict().items()}
            if {k: tuple(v.shape) for k, v in saved.items()} != expected:
                raise ValueError(f"{source} was made for a different base model: its copy of module '{module_name}' "
                                 f"has tensors { {k: tuple(v.shape) for k, v in saved.items()} }, this base's has "
                                 f"{expected}")
            wrapper.copies[name].load_state_dict(saved)
