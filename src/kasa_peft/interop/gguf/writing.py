"""Writing a GGUF file whole or not at all, with the ``gguf`` package's writer."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ..atomic import atomic_file


@dataclass(frozen=True)
class Field:
    """One metadata key-value pair (``sub_type`` for arrays)."""

    key: str
    value: Any
    type: gguf.GGUFValueType
    sub_type: gguf.GGUFValueType | None = None


@dataclass(frozen=True)
class Tensor:
    """One tensor: float data, or quantized blocks as bytes (``quantization`` names their type)."""

    name: str
    data: np.ndarray
    quantization: gguf.GGMLQuantizationType | None = None


def write_gguf(out: str | os.PathLike, architecture: str, fields: Iterable[Field], tensors: Iterable[Tensor]) -> Path:
    """Write a GGUF file to ``out`` (which must not exist), atomically."""
    with atomic_file(out) as staging:
        writer = gguf.GGUFWriter(staging, architecture)
        for field in fields:
            writer.add_key_value(field.key, field.value, field.type, field.sub_type)
        for tensor in tensors:
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.quantization)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(out)
