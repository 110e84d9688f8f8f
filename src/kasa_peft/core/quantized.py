"""Base layers whose weight is stored quantized (e.g. bitsandbytes 4-bit and 8-bit): how core reads them.

KaSA never writes the base weight, so a quantized base stays quantized: the truncation reads once the matrix the
layer computes with (its dequantized weight), and the adapter runs beside the layer. Core knows no quantization
library. An integration layer registers, per layer class, a `QuantizedLinear` saying how to dequantize and
requantize that class; ``kasa_peft`` declares (in `kasa_peft.providers`, plain data) that
``kasa_peft.models.bitsandbytes`` does so for the ``bitsandbytes`` package, and it is imported the first time a
layer of that package is met.

A layer that looks quantized (a packed or integer weight, GPTQ/AWQ's ``qweight``, HQQ's ``W_q``, a weight or
class from a quantization library) and has no registration is refused with an error naming what is supported:
bitsandbytes layers subclass ``nn.Linear`` and their ``.weight`` is packed data, so nothing quantized may pass
for a plain ``Linear``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..providers import QUANTIZATION_PROVIDERS

# top-level packages whose layers or weight tensors are quantized (GPTQ, AWQ, HQQ, torchao, quanto, ...)
QUANTIZATION_PACKAGES = ("bitsandbytes", "auto_gptq", "gptqmodel", "awq", "hqq", "torchao", "optimum", "quanto",
                         "eetq", "aqlm", "vptq", "compressed_tensors", "fbgemm_gpu")
PACKED_WEIGHT_ATTRIBUTES = ("qweight", "W_q")  # GPTQ / AWQ / Marlin / EETQ, HQQ


@dataclass(frozen=True)
class QuantizedLinear:
    """How core reads and rewrites the weight of one class of quantized linear layers.

    The quantized weight is the set of the module's attributes named in ``stored`` (e.g. ``("weight", "state")``):
    ``dequantize`` maps them to the float (out, in) matrix the layer computes with; ``quantize(module, weight)``
    returns new objects for them holding the float ``weight`` quantized as the module's is (it must not mutate the
    current ones: a merge keeps them to restore the layer bit-exact). ``fingerprint_tolerance`` is how far
    (relative to ``||W||_F``) the dequantized weight's fingerprint may lie from the full-precision weight's.
    """

    description: str
    stored: tuple[str, ...]
    dequantize: Callable[[Mapping[str, Any]], torch.Tensor]
    quantize: Callable[[nn.Module, torch.Tensor], dict[str, Any]]
    fingerprint_tolerance: float


_REGISTERED: dict[type, QuantizedLinear] = {}


def register_quantized_layer(layer_class: type, support: QuantizedLinear) -> None:
    """Let KaSA adapt layers of ``layer_class`` (and its subclasses) through ``support``."""
    _REGISTERED[layer_class] = support


def quantized_support(module: nn.Module) -> QuantizedLinear | None:
    """The registration for ``module``'s class, or ``None`` (a plain layer, or an unsupported quantized one)."""
    support = _registered(type(module))
    if support is None and _package(type(module)) in QUANTIZATION_PROVIDERS:
        importlib.import_module(QUANTIZATION_PROVIDERS[_package(type(module))][0])
        support = _registered(type(module))
    return support


def _registered(layer_class: type) -> QuantizedLinear | None:
    return next((_REGISTERED[c] for c in layer_class.__mro__ if c in _REGISTERED), None)


def _package(cls: type) -> str:
    return cls.__module__.partition(".")[0]


def looks_quantized(module: nn.Module) -> bool:
    """Whether ``module`` is a linear layer whose weight is not a plain float matrix."""
    if any(hasattr(module, name) for name in PACKED_WEIGHT_ATTRIBUTES):
        return True
    if not isinstance(module, nn.Linear):
        return False
    weight = module.weight
    packed = not weight.dtype.is_floating_point or weight.element_size() < 2  # integers, float8
    return packed or _package(type(module)) in QUANTIZATION_PACKAGES or _package(type(weight)) in QUANTIZATION_PACKAGES


def check_readable(module: nn.Module, layer_name: str) -> None:
    """Raise a clear error for a quantized layer KaSA cannot read."""
    if looks_quantized(module) and quantized_support(module) is None:
        cls = type(module)
        supported = "; ".join(supports for _, supports in QUANTIZATION_PROVIDERS.values()) or "none registered"
        raise ValueError(
            f"layer '{layer_name}' is a quantized {cls.__module__}.{cls.__name__}, which KaSA cannot read. "
            f"Supported quantized layers: {supported}. Load the model with bitsandbytes (e.g. transformers' "
            "BitsAndBytesConfig, or `kasa-peft train --quantize 4bit`) or unquantized, or leave this layer out "
            "(target_modules / exclude_modules)."
        )


def stored_weight(module: nn.Module, support: QuantizedLinear) -> dict[str, Any]:
    """The attributes that make up ``module``'s quantized weight (``support.stored``)."""
    return {name: getattr(module, name) for name in support.stored}


def set_stored_weight(module: nn.Module, stored: Mapping[str, Any]) -> None:
    for name, value in stored.items():
        setattr(module, name, value)
