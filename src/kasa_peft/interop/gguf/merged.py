"""Export a KaSA adapter merged into its base as one GGUF model file that llama.cpp loads as it is.

The base must come from a GGUF file (``--model x.gguf`` or the ``smollm2`` shortcut): its metadata
(hyperparameters, tokenizer, chat template) and every tensor the adapter leaves alone are taken from it,
and each changed tensor is the merged weight ``W - us vt + scale B diag(sigma) A`` of core's
``merge_and_unload`` (or a ``modules_to_save`` copy), rows in llama.cpp's order (:mod:`.naming`).

Tensor types (``tensor_type``):

* ``f32``, ``f16``, ``q8_0``: every matrix in that type (1-D tensors stay float32; a matrix whose rows
  do not split into q8_0's 32-value blocks falls back to f16), as ``convert_hf_to_gguf.py --outtype`` does;
* ``source``: each changed tensor quantized back into its type in the source file (where the ``gguf``
  package can quantize it: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, BF16, not the K-quants), all others copied byte for byte.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING, cast

import gguf
import numpy as np
import torch
from torch import nn

from ...core import merge_and_unload, set_adapter
from ...core import KasaLayer, kasa_layers, read_adapter
from ...core.model import saved_modules
from ...models import ModelLoadError, load_base, resolve_model_path
from ...models.gguf_file import read_gguf
from ..base_model import adapted_model
from .naming import GgufLayout
from .writing import Field, Tensor, write_gguf

if TYPE_CHECKING:
    from transformers import PretrainedConfig

QType = gguf.GGMLQuantizationType
TENSOR_TYPES: dict[str, QType | None] = {"f32": QType.F32, "f16": QType.F16, "q8_0": QType.Q8_0, "source": None}
FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}


def export_merged_gguf(source: str | os.PathLike | nn.Module, out: str | os.PathLike,
                       base_model: nn.Module | str | os.PathLike | None = None, adapter_name: str | None = None,
                       tensor_type: str = "f16", base_gguf: str | os.PathLike | None = None) -> Path:
    """Write ``source`` (a KaSA adapter directory or a model carrying one) merged into its base as GGUF ``out``.

    ``base_gguf`` is the base's GGUF file (default: the file the base model was loaded from). ``out`` must
    not exist; it is written atomically after every tensor has been computed. Returns ``out``.
    """
    if tensor_type not in TENSOR_TYPES:
        raise ValueError(f"unknown GGUF tensor type {tensor_type!r}; choose one of {list(TENSOR_TYPES)}")
    base_model, found = gguf_base(source, base_model)
    with adapted_model(source, base_model, adapter_name) as (model, name):
        layout = GgufLayout.of(model.config)
        reader = read_gguf(base_gguf or require_gguf(
            found, base_model or cast("PretrainedConfig", model.config).name_or_path))
        changed = merged_tensors(model, name, layout)
        check_fits(reader, layout, changed)
        tensors = [output_tensor(t, changed.get(t.name), tensor_type) for t in reader.tensors]
        return write_gguf(out, layout.architecture, copied_fields(reader, tensor_type), tensors)


def gguf_file(spec: str) -> Path | None:
    """The GGUF file a model spec (a shortcut such as ``smollm2``, or a ``.gguf`` path) stands for, else None."""
    try:
        origin = resolve_model_path(spec) if spec else None
    except ModelLoadError:
        return None
    return origin.gguf_path if origin is not None and origin.kind == "gguf" else None


def gguf_base(source: str | os.PathLike | nn.Module, base_model: nn.Module | str | os.PathLike | None,
              ) -> tuple[nn.Module | str | os.PathLike | None, Path | None]:
    """The base to export against and its GGUF file: a GGUF spec (``base_model``, else the one the adapter
    records) is loaded as the causal LM transformers dequantizes from it."""
    if isinstance(source, nn.Module) or isinstance(base_model, nn.Module):
        model = source if isinstance(source, nn.Module) else cast(nn.Module, base_model)
        return base_model, gguf_file(getattr(model.config, "name_or_path", "") or "")
    spec = str(base_model) if base_model is not None else read_adapter(source)[0].get("base_model", "")
    path = gguf_file(spec)
    return (load_base(spec, "causal_lm") if path is not None else base_model), path


def require_gguf(path: Path | None, base_model) -> Path:
    if path is None:
        raise ValueError(f"merged-gguf takes the tokenizer and hyperparameters from the base's GGUF file, but the base "
                         f"{base_model!r} is not one; pass --base FILE.gguf (the base as GGUF, e.g. from llama.cpp's "
                         "convert_hf_to_gguf.py), or use --format merged for a Hugging Face directory")
    return path


def adapted_layers(model: nn.Module, adapter_name: str) -> list[tuple[str, KasaLayer]]:
    return [(name, layer) for name, layer in kasa_layers(model) if adapter_name in layer.adapters]


def merged_tensors(model: nn.Module, adapter_name: str, layout: GgufLayout) -> dict[str, torch.Tensor]:
    """The tensors the adapter changes, merged (core ``merge_and_unload`` on a copy), by llama.cpp name."""
    parameters = [f"{module}.weight" for module, _ in adapted_layers(model, adapter_name)]
    parameters += [f"{module}.{p}" for module, wrapper in saved_modules(model) if adapter_name in wrapper.copies
                   for p, _ in wrapper.copies[adapter_name].named_parameters()]
    merged = copy.deepcopy(model)
    set_adapter(merged, adapter_name)
    state = merge_and_unload(merged).state_dict()
    names = {p: layout.tensor_name(p) for p in parameters}
    return {names[p]: layout.to_llama_rows(names[p], state[p].detach().float()) for p in parameters}


def check_fits(reader: gguf.GGUFReader, layout: GgufLayout, changed: dict[str, torch.Tensor]) -> None:
    """The GGUF file is of the model's architecture and holds every changed tensor, with the same shape."""
    architecture = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    if architecture != layout.architecture:
        raise ValueError(f"the base GGUF file is a {architecture!r} model but the adapter's base is "
                         f"{layout.architecture!r}; pass the GGUF file of the adapter's base model")
    shapes = {t.name: tuple(int(n) for n in reversed(t.shape)) for t in reader.tensors}
    for name, tensor in changed.items():
        if shapes.get(name) != tuple(tensor.shape):
            raise ValueError(f"the adapter changes {name} {tuple(tensor.shape)}, but the base GGUF file has "
                             f"{shapes.get(name, 'no such tensor')}; pass the GGUF file of the adapter's base model")


def output_tensor(source: gguf.ReaderTensor, changed: torch.Tensor | None, tensor_type: str) -> Tensor:
    """One tensor of the merged file: the source's (converted to ``tensor_type``) or the changed one."""
    if tensor_type == "source":
        if changed is None:
            return Tensor(source.name, source.data, source.tensor_type)
        return Tensor(source.name, quantized(changed.numpy(), source.tensor_type, source.name), source.tensor_type)
    values = changed.numpy() if changed is not None else gguf.quants.dequantize(source.data, source.tensor_type)
    qtype = TENSOR_TYPES[tensor_type] if values.ndim > 1 else QType.F32
    assert qtype is not None  # only "source" has no type
    try:
        return Tensor(source.name, gguf.quants.quantize(values, qtype), qtype)
    except gguf.quants.QuantError:  # rows not a whole number of blocks
        return Tensor(source.name, values.astype(np.float16), QType.F16)


def quantized(values: np.ndarray, qtype: QType, name: str) -> np.ndarray:
    try:
        return gguf.quants.quantize(values, qtype)
    except NotImplementedError:
        raise ValueError(f"the gguf package cannot write {qtype.name}, the type of {name} in the base GGUF file; "
                         "choose tensor type q8_0, f16 or f32 (and llama.cpp's llama-quantize for that type)") from None


def copied_fields(reader: gguf.GGUFReader, tensor_type: str) -> list[Field]:
    """The source file's metadata, less what the writer adds, with ``general.file_type`` set for ``tensor_type``."""
    fields = []
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == gguf.Keys.General.ARCHITECTURE:
            continue
        if key == gguf.Keys.General.FILE_TYPE and tensor_type in FILE_TYPES:
            continue
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        fields.append(Field(key, field.contents(), field.types[0], sub_type))
    if tensor_type in FILE_TYPES:
        fields.append(Field(gguf.Keys.General.FILE_TYPE, int(FILE_TYPES[tensor_type]), gguf.GGUFValueType.UINT32))
    return fields
