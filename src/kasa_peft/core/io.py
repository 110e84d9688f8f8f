"""Saving and loading adapters: ``adapter_config.json`` + ``adapter_model.safetensors``.

The file holds, per adapted layer, ``A``, ``B``, ``sigma``, ``sigma_init`` (the values sigma started from), the
dropped components ``dropped_us`` (out x d), ``dropped_vt`` (d x in) (so loading computes no SVD, and each
layer's ``d`` is their width) and a fingerprint of the base weight the adapter was made for; plus the
``modules_to_save`` copies. Files from before ``sigma_init`` load with it unknown (NaN).
Everything is checked against the model before the model is changed.

Saving is atomic, also over an existing adapter: the safetensors file carries the whole metadata in its
header (``kasa_peft_metadata``), so it alone is the adapter, and it is written first, by one atomic rename
(`files.write_file_atomically`). ``adapter_config.json`` is a readable copy renamed in after it; a process
killed between the two renames leaves the new safetensors beside the old JSON, and loading reads the header,
so the directory holds the old adapter or the new one, whole. Files without that header (written before
it existed) are read from ``adapter_config.json``. The metadata also records ``tensors_sha256``
(`tensor_checksum`), which loading verifies, and loading refuses non-finite values (but for an unknown
``sigma_init``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..version import __version__
from .config import KasaConfig
from .files import remove_stale, write_file_atomically, write_text_atomically
from .fingerprint import FINGERPRINT_TOLERANCE, fingerprint_tolerance, weight_fingerprint
from .layer import KasaLayer, ModulesToSave, copy_full_into, full_tensor, is_transposed, weight_matrix
from .model import (
    _base_layer, check_adapter_name, inject, kasa_layers, kasa_state, original_weight, saved_modules,
    unchanged_on_error,
)
from .truncation import DroppedComponents

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT = "kasa-peft"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("adapter_name", "config", "layers", "modules_to_save")
HEADER_KEY = "kasa_peft_metadata"  # the safetensors header entry holding the whole metadata
CHECKSUM_KEY = "tensors_sha256"
# the per-layer tensors of an adapter, as attributes of `KasaAdapter`; "sigma_init" is optional on reading
ADAPTER_TENSORS = ("A", "B", "sigma", "sigma_init", "dropped_us", "dropped_vt")
REQUIRED_TENSORS = ("A", "B", "sigma", "dropped_us", "dropped_vt", "base_fingerprint")
MAX_NAME_LENGTH = 1000  # of a layer or module name read from a file


def save_adapter(model: nn.Module, path: str | os.PathLike[str], adapter_name: str | None = None,
                 allow_non_finite: bool = False) -> Path:
    """Write one adapter (default: the active one) to directory ``path``; returns the path.

    An adapter holding NaN or infinity is refused (it is the trace of a diverged run, not a result) unless
    ``allow_non_finite`` (e.g. to inspect one); such a file does not load.
    """
    metadata, tensors = adapter_contents(model, adapter_name)
    return write_adapter(path, metadata, tensors, allow_non_finite)


def adapter_contents(model: nn.Module, adapter_name: str | None = None,
                     gathered: Callable[[nn.Module], AbstractContextManager[None]] = lambda module: nullcontext(),
                     ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
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
    tolerance = FINGERPRINT_TOLERANCE
    transposed = False
    for layer_name, layer in kasa_layers(model):
        if name not in layer.adapters:
            continue
        tolerance = max(tolerance, fingerprint_tolerance(layer.base_layer))
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
        "layers": layers, "modules_to_save": saved, "base_fingerprint_tolerance": tolerance,
        "fan_in_fan_out": transposed,  # the base stores these weights as (in, out): Conv1D (PEFT's name for it)
    }
    return metadata, {k: v.to("cpu").contiguous() for k, v in tensors.items()}


def write_adapter(path: str | os.PathLike[str], metadata: dict[str, Any], tensors: dict[str, torch.Tensor],
                  allow_non_finite: bool = False) -> Path:
    """Write ``adapter_contents``' output to directory ``path`` atomically (module docstring); returns the path."""
    path = Path(path)
    if not allow_non_finite:
        check_finite(tensors, f"the adapter to save to {path}", "find where training diverged (lower --lr, "
                     "check the data) or pass allow_non_finite=True to write it anyway")
    metadata = {**metadata, CHECKSUM_KEY: tensor_checksum(tensors)}
    header = {"format": "pt", HEADER_KEY: json.dumps(metadata)}
    created = not path.exists()
    remove_stale(path.parent, path.name)
    try:
        write_file_atomically(path / WEIGHTS_NAME, lambda file: save_file(tensors, str(file), metadata=header))
        write_text_atomically(path / CONFIG_NAME, json.dumps(metadata, indent=2) + "\n")
    except BaseException:
        if created:  # a first save that failed leaves nothing
            shutil.rmtree(path, ignore_errors=True)
        raise
    return path


def base_model_name(model: nn.Module) -> str:
    """Where the model was loaded from (a Hugging Face ``config.name_or_path``); ``""`` when that is unknown."""
    config = getattr(model, "config", None)
    return str(getattr(config, "name_or_path", "") or "")


def tensor_checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the tensors in name order: each one's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_finite(tensors: Mapping[str, torch.Tensor], what: str, fix: str) -> None:
    """Raise ``ValueError`` naming the first tensor of ``what`` that holds NaN or infinity (``sigma_init`` is NaN
    where it is unknown: adapters first saved before it was recorded)."""
    for name, tensor in tensors.items():
        if name.endswith(".sigma_init"):
            continue
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(f"{what}: tensor '{name}' holds {bad} NaN or infinite value(s); {fix}")


def read_adapter(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The metadata and tensors of a saved adapter, with errors that say what is wrong with the directory.

    The metadata comes from the safetensors header, or from ``adapter_config.json`` for files written before
    the header carried it; the tensors are checked against ``tensors_sha256`` when recorded, and for NaN/inf.
    """
    path = Path(path)
    config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    if not weights_file.is_file():
        check_not_a_whole_adapted_model(path)
        raise FileNotFoundError(f"{path} is not a KaSA adapter directory: it needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    header = _header_metadata(weights_file)
    if header is None and not config_file.is_file():
        raise FileNotFoundError(f"{path} is not a KaSA adapter directory: it needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    source = weights_file if header is not None else config_file
    metadata = _parse_metadata(header, source) if header is not None else _read_config_file(config_file)
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{config_file} is not a kasa-peft adapter config.{_peft_hint(metadata)}")
    version = metadata.get("format_version", 0)
    if not _is_count(version):
        raise ValueError(f"{source}: format_version {version!r} is not a format number; save the adapter again")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path} was written by a newer kasa-peft (format {version}); upgrade kasa-peft")
    missing = [key for key in REQUIRED_KEYS if key not in metadata]
    if missing:
        raise ValueError(f"{source} is incomplete (no {missing}); save the adapter again")
    _check_metadata(source, metadata)
    config = adapter_config(source, metadata)
    try:
        tensors = load_file(str(weights_file))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{weights_file} is corrupt or truncated ({err}); save the adapter again") from None
    verify_tensors(weights_file, metadata.get(CHECKSUM_KEY), tensors)
    _check_tensors(path, metadata["layers"], metadata["modules_to_save"], tensors)
    _check_ranks(path, config, metadata["layers"], tensors)
    return metadata, tensors


def adapter_config(source: Path, metadata: dict[str, Any]) -> KasaConfig:
    """The ``KasaConfig`` an adapter's metadata records; a bad value is an error naming ``source``."""
    try:
        return KasaConfig.from_dict(metadata["config"])
    except ValueError as err:
        problem = str(err).replace("invalid KasaConfig: ", "")
        raise ValueError(f"{source}: its config is damaged ({problem}); save the adapter again") from None


def _check_metadata(source: Path, metadata: dict[str, Any]) -> None:
    """Types, ranges and shapes of the metadata fields, before anything uses them (the file is untrusted)."""
    def require(condition: bool, what: str) -> None:
        if not condition:
            raise ValueError(f"{source}: {what}; the adapter file is damaged, save the adapter again")

    require(isinstance(metadata["adapter_name"], str), f"adapter_name {metadata['adapter_name']!r} is not a string")
    require(isinstance(metadata["config"], dict), f"config {metadata['config']!r} is not a mapping of settings")
    layers, modules = metadata["layers"], metadata["modules_to_save"]
    require(isinstance(layers, dict) and bool(layers),
            "layers must map each adapted layer's name to its [out, in] shape")
    for name, shape in layers.items():
        require(_is_module_name(name), f"layer name {name[:80]!r} is not a module name")
        require(isinstance(shape, list) and len(shape) == 2 and all(_is_count(n) and n > 0 for n in shape),
                f"layer '{name}' has shape {shape!r}, expected [out_features, in_features] (two positive integers)")
    require(isinstance(modules, list) and all(_is_module_name(m) for m in modules),
            f"modules_to_save {modules!r} is not a list of module names")
    tolerance = metadata.get("base_fingerprint_tolerance", FINGERPRINT_TOLERANCE)
    require(isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool) and 0 <= tolerance < 1,
            f"base_fingerprint_tolerance {tolerance!r} is not a relative distance in [0, 1)")
    for key, kind in (("fan_in_fan_out", bool), ("base_model", str), (CHECKSUM_KEY, str),
                      ("kasa_peft_version", str)):
        require(metadata.get(key) is None or isinstance(metadata[key], kind),
                f"{key} {metadata.get(key)!r} is not a {kind.__name__}")


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_module_name(name: object) -> bool:
    """A dotted module name of sane length (names go into messages and regular-expression matching)."""
    return isinstance(name, str) and 0 < len(name) <= MAX_NAME_LENGTH and all(name.split("."))


def check_not_a_whole_adapted_model(path: Path) -> None:
    """Raise, saying how to recover the adapter, when ``path`` holds the whole state dict of a KaSA-adapted model
    (what ``save_pretrained`` wrote before kasa-peft made it write the adapter: ``...base_layer.weight``,
    ``...adapters.NAME.A``). It lacks the adapter's config (``alpha``, ``beta``, ...), so it cannot be read as one."""
    names = saved_tensor_names(path)
    adapted = sorted({name.split(".adapters.")[1].split(".")[0] for name in names if ".adapters." in name})
    if not adapted or not any(".base_layer." in name for name in names):
        return
    raise ValueError(
        f"{path} holds a whole KaSA-adapted model (state dict keys such as '...base_layer.weight' and "
        f"'...adapters.{adapted[0]}.A'), as save_pretrained or a Trainer that is not KaSA-aware wrote it; "
        "from_pretrained would load it with the adapted layers at random. Recover the adapter: adapt the base it was "
        f"trained on with the same settings, model = kasa_peft.inject(base, KasaConfig(...), adapter_name="
        f"'{adapted[0]}'), copy the saved values in, model.load_state_dict(safetensors.torch.load_file(FILE), "
        "strict=False) for each .safetensors FILE in the folder, then kasa_peft.save_adapter(model, NEW_DIR)")


def saved_tensor_names(path: Path) -> list[str]:
    """The tensor names of the model weights ``save_pretrained`` writes to ``path`` (safetensors, single or sharded)."""
    names: list[str] = []
    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                names += list(handle.keys())
        except (SafetensorError, OSError, ValueError):
            continue
    return names


def verify_tensors(weights_file: Path, checksum: str | None, tensors: Mapping[str, torch.Tensor]) -> None:
    """Raise ``ValueError`` naming ``weights_file`` when its tensors differ from ``checksum`` (``None``: not
    recorded, an older file) or hold NaN/inf."""
    if checksum is not None and tensor_checksum(tensors) != checksum:
        raise ValueError(f"{weights_file} is corrupt: its tensor data do not match the sha256 recorded when it was "
                         "saved; save the adapter again or restore the file from a copy")
    check_finite(tensors, str(weights_file), "the adapter is unusable; save it again from a finite model")


def _header_metadata(weights_file: Path) -> str | None:
    """The metadata JSON in the safetensors header, ``None`` when the header has none (older files)."""
    try:
        with safe_open(str(weights_file), framework="pt") as handle:
            return (handle.metadata() or {}).get(HEADER_KEY)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{weights_file} is corrupt or truncated ({err}); save the adapter again") from None


def _parse_metadata(text: str, source: Path) -> dict[str, Any]:
    try:
        metadata = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{source} is corrupt ({err}); save the adapter again") from None
    if not isinstance(metadata, dict):
        raise ValueError(f"{source} is corrupt (its metadata is not a JSON object); save the adapter again")
    return metadata


def _read_config_file(config_file: Path) -> dict[str, Any]:
    try:
        text = config_file.read_text()
    except UnicodeDecodeError as err:
        raise ValueError(f"{config_file} is corrupt ({err}); save the adapter again") from None
    return _parse_metadata(text, config_file)


def _peft_hint(metadata: dict[str, Any]) -> str:
    """What to do with a PEFT adapter directory given where a KaSA adapter was expected."""
    if "peft_type" not in metadata:
        return ""
    if metadata.get("kasa_config"):
        return " It is a PEFT KaSA adapter: convert it with `kasa-peft import` (kasa_peft.interop.import_peft_kasa)."
    return (f" It is a PEFT {metadata['peft_type']} adapter (a `--method` baseline run saves one): evaluate the run "
            "with `kasa-peft eval --run DIR`, or load it with peft.PeftModel.from_pretrained(base, DIR).")


def load_adapter(model: nn.Module, path: str | os.PathLike[str], adapter_name: str | None = None) -> nn.Module:
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
    _check_base(model, path, layers, tensors, metadata.get("base_fingerprint_tolerance", FINGERPRINT_TOLERANCE))
    _check_saved_modules(model, path, metadata["modules_to_save"], tensors)
    dropped = {n: DroppedComponents(tensors[f"{n}.dropped_us"], tensors[f"{n}.dropped_vt"]) for n in layers}
    # the layers are selected by their names in the file: a target_modules pattern read from a file never runs
    by_name = config.replace(target_modules=tuple(layers), exclude_modules=())
    with unchanged_on_error(model):
        inject(model, by_name, name, dropped=dropped)
        kasa_state(model).configs[name] = config
        with torch.no_grad():
            for layer_name, layer in kasa_layers(model):
                if layer_name in layers:
                    adapter = layer.adapter(name)
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


def restore_adapter(model: nn.Module, path: str | os.PathLike[str], adapter_name: str | None = None) -> nn.Module:
    """Overwrite the values of an existing adapter (default: the active one) with those saved in ``path``.

    In place, for resuming a run: parameters keep their identity (an optimizer built on them stays valid),
    and FSDP2-sharded parameters take their own shard of the saved values. The saved adapter must have the
    same layers and ranks; the base is not fingerprinted (it was checked when the adapter was created).
    """
    metadata, tensors = read_adapter(path)
    state = kasa_state(model)
    name = adapter_name or state.active
    layers = {layer_name: layer for layer_name, layer in kasa_layers(model)
              if name is not None and name in layer.adapters}
    fix = "resume with the settings the run was started with, or load it onto a fresh model with load_adapter"
    if set(layers) != set(metadata["layers"]):
        raise ValueError(f"{path} adapts other layers than adapter '{name}' of this model: {fix}")
    adapted = cast(str, name)  # not None wherever a layer below is visited: the layers are those it adapts
    for layer_name, layer in layers.items():
        for key in ("sigma", "dropped_us"):
            saved, current = tensors[f"{layer_name}.{key}"].shape[-1], getattr(layer.adapter(adapted), key).shape[-1]
            if saved != current:
                what = "rank" if key == "sigma" else "dropped rank d"
                raise ValueError(f"{path} has {what} {saved} at '{layer_name}', adapter '{name}' has {current}: {fix}")
    for layer_name, layer in layers.items():
        adapter = layer.adapter(adapted)
        for key in ADAPTER_TENSORS:
            if f"{layer_name}.{key}" in tensors:
                copy_full_into(getattr(adapter, key), tensors[f"{layer_name}.{key}"])
    for module_name, wrapper in saved_modules(model):
        if module_name in metadata["modules_to_save"] and name is not None and name in wrapper.copies:
            saved_copy = _saved_copy(tensors, module_name)
            for key, value in wrapper.copies[name].state_dict(keep_vars=True).items():
                copy_full_into(value, saved_copy[key])
    return model


def _check_tensors(path: Path, layers: dict[str, list[int]], modules: list[str],
                   tensors: dict[str, torch.Tensor]) -> None:
    for name, (out_features, in_features) in layers.items():
        for key in REQUIRED_TENSORS:
            if f"{name}.{key}" not in tensors:
                raise ValueError(f"{path}: tensor '{name}.{key}' is missing; the adapter file is incomplete, "
                                 "save it again")
        for key in (*ADAPTER_TENSORS, "base_fingerprint"):
            tensor = tensors.get(f"{name}.{key}")
            dims = 2 if key in ("A", "B", "dropped_us", "dropped_vt") else 1
            if tensor is not None and (tensor.dim() != dims or not tensor.is_floating_point()):
                raise ValueError(f"{path}: tensor '{name}.{key}' is a {tensor.dim()}-D {tensor.dtype} tensor, "
                                 f"expected a {dims}-D float one; the adapter file is inconsistent, save it again")
        r, d = tensors[f"{name}.sigma"].shape[0], tensors[f"{name}.dropped_us"].shape[-1]
        if d >= min(out_features, in_features):
            raise ValueError(f"{path}: layer '{name}' drops d={d} of the min(out, in)={min(out_features, in_features)} "
                             "components of its weight; the adapter file is inconsistent, save it again")
        expected = {"A": (r, in_features), "B": (out_features, r), "sigma_init": (r,), "dropped_us": (out_features, d),
                    "dropped_vt": (d, in_features), "base_fingerprint": (4,)}
        for key, shape in expected.items():
            if f"{name}.{key}" in tensors and tuple(tensors[f"{name}.{key}"].shape) != shape:
                raise ValueError(f"{path}: tensor '{name}.{key}' has shape {tuple(tensors[f'{name}.{key}'].shape)}, "
                                 f"expected {shape}; the adapter file is inconsistent, save it again")
    for module_name in modules:
        if not any(k.startswith(f"modules_to_save.{module_name}.") for k in tensors):
            raise ValueError(f"{path}: the saved copy of module '{module_name}' is missing; save the adapter again")


def _check_ranks(path: Path, config: KasaConfig, layers: dict[str, list[int]],
                 tensors: dict[str, torch.Tensor]) -> None:
    """The rank of every saved layer must be the config's ``r`` (the adapter is built from the config)."""
    for name in layers:
        rank = tensors[f"{name}.sigma"].shape[0]
        if rank != config.r:
            raise ValueError(f"{path}: its config says r = {config.r} but layer '{name}' has rank {rank}; the "
                             "adapter is inconsistent, save it again")


def _check_saved_modules(model: nn.Module, path: str | os.PathLike[str], modules: list[str],
                         tensors: dict[str, torch.Tensor]) -> None:
    """Each saved copy must have the names and shapes of the model's module it replaces."""
    for module_name in modules:
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            raise ValueError(f"adapter {path} was made for a different base model: it saves module "
                             f"'{module_name}', which this model does not have") from None
        expected = {k: tuple(v.shape) for k, v in _original(module).state_dict().items()}
        saved = {k: tuple(v.shape) for k, v in _saved_copy(tensors, module_name).items()}
        if saved != expected:
            raise ValueError(f"adapter {path} was made for a different base model: its copy of module "
                             f"'{module_name}' has tensors {saved}, this model's has {expected}")


def _original(module: nn.Module) -> nn.Module:
    return module.original if isinstance(module, ModulesToSave) else module


def _check_base(model: nn.Module, path: str | os.PathLike[str], layers: dict[str, list[int]],
                tensors: dict[str, torch.Tensor], saved_tolerance: float) -> None:
    """Fail before any change when ``model`` is not the base the adapter was made for (``saved_tolerance``: how
    precise the saved fingerprints are, `FINGERPRINT_TOLERANCE` unless the base they came from was quantized)."""
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
        if (actual - expected).abs().max() > max(saved_tolerance, fingerprint_tolerance(module)) * expected[0]:
            raise ValueError(f"adapter {path} was made for a different base model: the weights of layer '{name}' "
                             "differ from those it was trained on. Load it onto the model it was trained on.")


def _unmerged_weight(model: nn.Module, name: str, module: nn.Module) -> torch.Tensor:
    layer = model.get_submodule(name)
    return original_weight(layer) if isinstance(layer, KasaLayer) else weight_matrix(module)
