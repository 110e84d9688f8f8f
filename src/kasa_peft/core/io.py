"""Saving and loading adapters: ``adapter_config.json`` + ``adapter_model.safetensors``.

The file holds, per adapted layer, ``A``, ``B``, ``sigma``, ``sigma_init`` (the values sigma started from), the
dropped components ``dropped_us`` (out x d), ``dropped_vt`` (d x in) (so loading computes no SVD, and each
layer's ``d`` is their width) and a fingerprint of the base weight the adapter was made for; plus the
``modules_to_save`` copies. Files from before ``sigma_init`` load with it unknown (NaN).
Everything is checked against the model before the model is changed, and saves are atomic.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..version import __version__
from .config import KasaConfig
from .files import default_permissions
from .layer import KasaLayer, copy_full_into, full_tensor, is_transposed, weight_matrix
from .model import (
    _base_layer, check_adapter_name, inject, kasa_layers, kasa_state, original_weight, saved_modules,
)
from .truncation import DroppedComponents

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT = "kasa-peft"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("adapter_name", "config", "layers", "modules_to_save")
# the per-layer tensors of an adapter, as attributes of `KasaAdapter`; "sigma_init" is optional on reading
ADAPTER_TENSORS = ("A", "B", "sigma", "sigma_init", "dropped_us", "dropped_vt")
REQUIRED_TENSORS = ("A", "B", "sigma", "dropped_us", "dropped_vt", "base_fingerprint")
# A base whose weights differ from the fingerprinted ones by more than this (relative to ||W||_F) is another
# model. Loose enough for a dtype change of the base (bf16 rounding is ~4e-3), tight enough for any other model.
FINGERPRINT_TOLERANCE = 1e-2


def weight_fingerprint(weight: torch.Tensor) -> torch.Tensor:
    """Four float64 numbers that identify an (out, in) weight: ``||W||_F`` and three ``u_i^T W v_i``.

    ``u_i``, ``v_i`` are fixed cosine patterns, so the fingerprint costs one skinny matmul per layer.
    """
    w = weight.detach().to(torch.float64)
    u = _cosine_patterns(w.shape[0], 0.37, 1, w.device)
    v = _cosine_patterns(w.shape[1], 0.61, 2, w.device)
    projections = ((w @ v) * u).sum(dim=0)
    return torch.cat([torch.linalg.matrix_norm(w).reshape(1), projections]).cpu()


@functools.lru_cache(maxsize=32)
def _cosine_patterns(length: int, frequency: float, phase: int, device: torch.device) -> torch.Tensor:
    """Three columns ``cos(frequency (i + 1) j + phase i)``, j < length (cached: layers share shapes)."""
    positions = torch.arange(length, dtype=torch.float64, device=device)
    return torch.stack([torch.cos(frequency * (i + 1) * positions + phase * i) for i in range(3)], dim=1)


def save_adapter(model: nn.Module, path: str | os.PathLike, adapter_name: str | None = None) -> Path:
    """Write one adapter (default: the active one) to directory ``path``; returns the path."""
    metadata, tensors = adapter_contents(model, adapter_name)
    return write_adapter(path, metadata, tensors)


def adapter_contents(model: nn.Module, adapter_name: str | None = None,
                     gathered: Callable[[nn.Module], AbstractContextManager] = lambda module: nullcontext(),
                     ) -> tuple[dict, dict[str, torch.Tensor]]:
    """What ``save_adapter`` writes: the metadata and the complete tensors, on the CPU.

    Tensors sharded by FSDP2 are gathered one at a time (so under FSDP2 every rank must call this); each
    adapted layer and saved module is read inside ``gathered(module)``, a context in which its parameters are
    whole (e.g. DeepSpeed ZeRO-3's ``GatheredParameters``).
    """
    state = kasa_state(model)
    name = adapter_name or state.active
    if name not in state.configs:
        raise ValueError(f"no adapter named '{name}' to save; this model has {sorted(state.configs)}")
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, list[int]] = {}
    transposed = False
    for layer_name, layer in kasa_layers(model):
        if name not in layer.adapters:
            continue
        adapter = layer.adapters[name]
        transposed = transposed or is_transposed(layer.base_layer)
        with gathered(layer):
            for key in ADAPTER_TENSORS:
                tensors[f"{layer_name}.{key}"] = full_tensor(getattr(adapter, key).detach()).clone()
            tensors[f"{layer_name}.base_fingerprint"] = weight_fingerprint(full_tensor(original_weight(layer)))
            layers[layer_name] = [layer.out_features, layer.in_features]
    saved = []
    for module_name, wrapper in saved_modules(model):
        if name in wrapper.copies:
            saved.append(module_name)
            with gathered(wrapper.copies[name]):
                for key, value in wrapper.copies[name].state_dict().items():
                    tensors[f"modules_to_save.{module_name}.{key}"] = full_tensor(value.detach()).clone()
    metadata = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "kasa_peft_version": __version__,
        "adapter_name": name, "base_model": base_model_name(model), "config": state.configs[name].to_dict(),
        "layers": layers, "modules_to_save": saved,
        "fan_in_fan_out": transposed,  # the base stores these weights as (in, out): Conv1D (PEFT's name for it)
    }
    return metadata, {k: v.to("cpu").contiguous() for k, v in tensors.items()}


def write_adapter(path: str | os.PathLike, metadata: dict, tensors: dict[str, torch.Tensor]) -> Path:
    """Write ``adapter_contents``' output to directory ``path`` atomically; returns the path."""
    _write_atomically(Path(path), {CONFIG_NAME: lambda p: p.write_text(json.dumps(metadata, indent=2) + "\n"),
                                   WEIGHTS_NAME: lambda p: save_file(tensors, str(p), metadata={"format": "pt"})})
    return Path(path)


def base_model_name(model: nn.Module) -> str:
    """Where the model was loaded from (a Hugging Face ``config.name_or_path``); ``""`` when that is unknown."""
    config = getattr(model, "config", None)
    return str(getattr(config, "name_or_path", "") or "")


def _write_atomically(target: Path, writers: dict) -> None:
    """Write all files into a temporary sibling directory, then swap it in place of ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        for filename, write in writers.items():
            write(staging / filename)
        default_permissions(staging)
        if target.exists():
            _merge_into(staging, target)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _merge_into(staging: Path, target: Path) -> None:
    """Replace ``target``'s adapter files by ``staging``'s, each by an atomic rename (other files are kept)."""
    for file in staging.iterdir():
        os.replace(file, target / file.name)


def read_adapter(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """The metadata and tensors of a saved adapter, with errors that say what is wrong with the directory."""
    path = Path(path)
    config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    if not config_file.is_file() or not weights_file.is_file():
        raise FileNotFoundError(f"{path} is not a KaSA adapter directory: it needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        metadata = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_file} is corrupt ({err}); save the adapter again") from None
    if not isinstance(metadata, dict):
        raise ValueError(f"{config_file} is corrupt (not a JSON object); save the adapter again")
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{config_file} is not a kasa-peft adapter config.{_peft_hint(metadata)}")
    if metadata.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} was written by a newer kasa-peft (format {metadata['format_version']}); "
                         "upgrade kasa-peft")
    missing = [key for key in REQUIRED_KEYS if key not in metadata]
    if missing:
        raise ValueError(f"{config_file} is incomplete (no {missing}); save the adapter again")
    try:
        tensors = load_file(str(weights_file))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{weights_file} is corrupt or truncated ({err}); save the adapter again") from None
    return metadata, tensors


def _peft_hint(metadata: dict) -> str:
    """What to do with a PEFT adapter directory given where a KaSA adapter was expected."""
    if "peft_type" not in metadata:
        return ""
    if metadata.get("kasa_config"):
        return " It is a PEFT KaSA adapter: convert it with `kasa-peft import` (kasa_peft.interop.import_peft_kasa)."
    return (f" It is a PEFT {metadata['peft_type']} adapter (a `--method` baseline run saves one): evaluate the run "
            "with `kasa-peft eval --run DIR`, or load it with peft.PeftModel.from_pretrained(base, DIR).")


def load_adapter(model: nn.Module, path: str | os.PathLike, adapter_name: str | None = None) -> nn.Module:
    """Load a saved adapter onto ``model`` (the same base it was made for) without computing any SVD.

    The adapter is added under ``adapter_name`` (default: the name it was saved with) and becomes active.
    """
    metadata, tensors = read_adapter(path)
    name = adapter_name or metadata["adapter_name"]
    if adapter_name is None:
        try:
            check_adapter_name(name)
        except ValueError as err:
            raise ValueError(f"{Path(path) / CONFIG_NAME}: {err}; load it under another name "
                             "(adapter_name=..., or NAME=DIR on the command line)") from None
    config = KasaConfig.from_dict(metadata["config"])
    layers = metadata["layers"]
    _check_tensors(path, layers, metadata["modules_to_save"], tensors)
    _check_base(model, path, layers, tensors)
    dropped = {n: DroppedComponents(tensors[f"{n}.dropped_us"], tensors[f"{n}.dropped_vt"]) for n in layers}
    inject(model, config, name, dropped=dropped)
    with torch.no_grad():
        for layer_name, layer in kasa_layers(model):
            if layer_name in layers:
                adapter = layer.adapters[name]
                for key in ("A", "B", "sigma"):
                    getattr(adapter, key).copy_(tensors[f"{layer_name}.{key}"])
                adapter.sigma_init.copy_(tensors.get(f"{layer_name}.sigma_init", torch.tensor(float("nan"))))
    for module_name, wrapper in saved_modules(model):
        if module_name in metadata["modules_to_save"]:
            wrapper.copies[name].load_state_dict(_saved_copy(tensors, module_name))
    return model


def _saved_copy(tensors: dict[str, torch.Tensor], module_name: str) -> dict[str, torch.Tensor]:
    """The state dict of the saved copy of module ``module_name`` (``modules_to_save``)."""
    prefix = f"modules_to_save.{module_name}."
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def restore_adapter(model: nn.Module, path: str | os.PathLike, adapter_name: str | None = None) -> nn.Module:
    """Overwrite the values of an existing adapter (default: the active one) with those saved in ``path``.

    In place, for resuming a run: parameters keep their identity (an optimizer built on them stays valid),
    and FSDP2-sharded parameters take their own shard of the saved values. The saved adapter must have the
    same layers and ranks; the base is not fingerprinted (it was checked when the adapter was created).
    """
    metadata, tensors = read_adapter(path)
    state = kasa_state(model)
    name = adapter_name or state.active
    layers = {layer_name: layer for layer_name, layer in kasa_layers(model) if name in layer.adapters}
    _check_tensors(path, metadata["layers"], metadata["modules_to_save"], tensors)
    fix = "resume with the settings the run was started with, or load it onto a fresh model with load_adapter"
    if set(layers) != set(metadata["layers"]):
        raise ValueError(f"{path} adapts other layers than adapter '{name}' of this model: {fix}")
    for layer_name, layer in layers.items():
        for key in ("sigma", "dropped_us"):
            saved, current = tensors[f"{layer_name}.{key}"].shape[-1], getattr(layer.adapters[name], key).shape[-1]
            if saved != current:
                what = "rank" if key == "sigma" else "dropped rank d"
                raise ValueError(f"{path} has {what} {saved} at '{layer_name}', adapter '{name}' has {current}: {fix}")
    for layer_name, layer in layers.items():
        adapter = layer.adapters[name]
        for key in ADAPTER_TENSORS:
            if f"{layer_name}.{key}" in tensors:
                copy_full_into(getattr(adapter, key), tensors[f"{layer_name}.{key}"])
    for module_name, wrapper in saved_modules(model):
        if module_name in metadata["modules_to_save"] and name in wrapper.copies:
            saved = _saved_copy(tensors, module_name)
            for key, value in wrapper.copies[name].state_dict(keep_vars=True).items():
                copy_full_into(value, saved[key])
    return model


def _check_tensors(path, layers: dict, modules: list[str], tensors: dict[str, torch.Tensor]) -> None:
    for name, (out_features, in_features) in layers.items():
        for key in REQUIRED_TENSORS:
            if f"{name}.{key}" not in tensors:
                raise ValueError(f"{path}: tensor '{name}.{key}' is missing; the adapter file is incomplete, "
                                 "save it again")
        r, d = tensors[f"{name}.sigma"].shape[0], tensors[f"{name}.dropped_us"].shape[-1]
        if d >= min(out_features, in_features):
            raise ValueError(f"{path}: layer '{name}' drops d={d} of the min(out, in)={min(out_features, in_features)} "
                             "components of its weight; the adapter file is inconsistent, save it again")
        expected = {"A": (r, in_features), "B": (out_features, r), "sigma_init": (r,), "dropped_us": (out_features, d),
                    "dropped_vt": (d, in_features)}
        for key, shape in expected.items():
            if f"{name}.{key}" in tensors and tuple(tensors[f"{name}.{key}"].shape) != shape:
                raise ValueError(f"{path}: tensor '{name}.{key}' has shape {tuple(tensors[f'{name}.{key}'].shape)}, "
                                 f"expected {shape}; the adapter file is inconsistent, save it again")
    for module_name in modules:
        if not any(k.startswith(f"modules_to_save.{module_name}.") for k in tensors):
            raise ValueError(f"{path}: the saved copy of module '{module_name}' is missing; save the adapter again")


def _check_base(model: nn.Module, path, layers: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Fail before any change when ``model`` is not the base the adapter was made for."""
    for name, (out_features, in_features) in layers.items():
        try:
            module = _base_layer(model, name)
        except AttributeError:
            raise ValueError(f"adapter {path} was made for a different base model: it adapts layer '{name}', "
                             "which this model does not have. Load it onto the model it was trained on.") from None
        weight = _unmerged_weight(model, name, module)
        if tuple(weight.shape) != (out_features, in_features):
            raise ValueError(f"adapter {path} was made for a different base model: layer '{name}' has shape "
                             f"{tuple(weight.shape)} here but ({out_features}, {in_features}) in the adapter.")
        expected = tensors[f"{name}.base_fingerprint"]
        actual = weight_fingerprint(weight)
        if (actual - expected).abs().max() > FINGERPRINT_TOLERANCE * expected[0]:
            raise ValueError(f"adapter {path} was made for a different base model: the weights of layer '{name}' "
                             "differ from those it was trained on. Load it onto the model it was trained on.")


def _unmerged_weight(model: nn.Module, name: str, module: nn.Module) -> torch.Tensor:
    layer = model.get_submodule(name)
    return original_weight(layer) if isinstance(layer, KasaLayer) else weight_matrix(module)
