"""KaSA on bitsandbytes bases: ``Linear4bit`` (NF4 or FP4, with or without double quantization) and
``Linear8bitLt``, and loading a model quantized.

Importing this module registers both layer classes with `kasa_peft.core.quantized` (``kasa_peft`` imports it the
first time it meets a bitsandbytes layer). The base stays quantized: the truncation is computed in float64 from
the dequantized weight, which is what the layer computes with, and the adapter runs beside it in float32.

A merge dequantizes, adds the adapter's delta and requantizes the same way (rounding the delta to the base's
4 or 8 bits, so the merged layer computes only approximately what the adapter did); unmerge puts the stored
quantized weight back bit-exact.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Literal, cast

import bitsandbytes as bnb
import torch
from torch import nn

from ..core.quantized import QuantizedLinear, register_quantized_layer

Quantize = Literal["4bit", "8bit"]
QUANTIZE_CHOICES: tuple[Quantize, ...] = ("4bit", "8bit")
# How far the fingerprint (core/io.py) of a dequantized weight may lie from the float weight's, relative to
# ||W||_F: quantization noise moves it by about its relative error (NF4 ~0.09, FP4 ~0.14, int8 ~0.01). Largest
# distance measured over the 210 linear layers of SmolLM2-135M: 0.165 (NF4), 0.162 (FP4), 0.013 (int8).
FOUR_BIT_FINGERPRINT_TOLERANCE = 0.25
EIGHT_BIT_FINGERPRINT_TOLERANCE = 0.025


def dequantize_4bit(stored: Mapping[str, Any]) -> torch.Tensor:
    weight = stored["weight"]
    data, state = weight.data, weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):
        data, state = _unpacked_copy(data, state)
    return bnb.functional.dequantize_4bit(data, state)


def _unpacked_copy(data: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
    """A copy, in the standard layout, of a 4-bit weight bitsandbytes' CPU inference path has repacked (at its
    first eval-mode forward without gradients, on CPUs with AVX512-BF16), with the bfloat16 statistics it now
    computes with; the layer is left as it is.

    bitsandbytes 0.50.2's inverse would requantize double-quantized statistics (changing them) and leaves plain
    ones in the packed (transposed) order: they are kept as they are and put back in the order
    ``dequantize_4bit`` reads.
    """
    state = copy.deepcopy(state)
    state.original_nested = False
    data, state = bnb.functional._convert_weight_packed_for_cpu_inverse(data.clone(), state)
    state.absmax = state.absmax.T.reshape(-1).float()
    return data, state


def quantize_4bit(module: nn.Module, weight: torch.Tensor) -> dict[str, Any]:
    """A new ``Params4bit`` holding ``weight`` with the module's quantization type, block size and statistics."""
    old = cast(bnb.nn.Params4bit, module.weight)  # registered for Linear4bit, whose weight is a Params4bit
    assert old.quant_state is not None  # a quantized weight carries its statistics
    dtype = getattr(old.quant_state, "original_dtype", old.quant_state.dtype)  # the CPU packing changes dtype
    new = bnb.nn.Params4bit(weight.to("cpu", dtype), requires_grad=False, blocksize=old.blocksize,
                            compress_statistics=old.compress_statistics, quant_type=old.quant_type,
                            quant_storage=old.quant_storage, module=cast(bnb.nn.Linear4bit, module))
    return {"weight": new.to(old.device)}  # type: ignore[misc]  # bitsandbytes types `to`'s self as an nn.Module


def dequantize_8bit(stored: Mapping[str, Any]) -> torch.Tensor:
    """``CB * SCB / 127`` (row-wise absmax int8); before its first forward the layer keeps ``SCB`` on the weight."""
    weight, state = stored["weight"], stored["state"]
    if weight.dtype != torch.int8:  # has_fp16_weights: kept in float16, quantized on the fly
        return weight.detach()
    scale = weight.SCB if weight.SCB is not None else state.SCB
    return bnb.functional.int8_vectorwise_dequant(weight.data, scale.to(weight.device))


def quantize_8bit(module: nn.Module, weight: torch.Tensor) -> dict[str, Any]:
    """A new ``Int8Params`` holding ``weight`` (quantized row-wise), and a copy of the layer state without the old
    weight's statistics (the layer's next forward takes the new ones)."""
    old = cast(bnb.nn.Int8Params, module.weight)  # registered for Linear8bitLt, whose weight is an Int8Params
    new = bnb.nn.Int8Params(weight.to("cpu"), requires_grad=False, has_fp16_weights=old.has_fp16_weights)  # type: ignore[attr-defined]  # set in __new__, undeclared
    state = copy.copy(cast(bnb.nn.Linear8bitLt, module).state)
    state.reset_grads()
    return {"weight": new.to(old.device), "state": state}  # type: ignore[misc]  # as in quantize_4bit


register_quantized_layer(bnb.nn.Linear4bit, QuantizedLinear(
    "bitsandbytes Linear4bit", ("weight",), dequantize_4bit, quantize_4bit, FOUR_BIT_FINGERPRINT_TOLERANCE))
register_quantized_layer(bnb.nn.Linear8bitLt, QuantizedLinear(
    "bitsandbytes Linear8bitLt", ("weight", "state"), dequantize_8bit, quantize_8bit, EIGHT_BIT_FINGERPRINT_TOLERANCE))


def quantization_config(quantize: Quantize, compute_dtype: torch.dtype = torch.float32):
    """transformers' ``BitsAndBytesConfig`` for ``quantize``: ``"4bit"`` is QLoRA's NF4 with double quantization
    computing in ``compute_dtype``; ``"8bit"`` is LLM.int8() with its default outlier threshold."""
    from transformers import BitsAndBytesConfig

    if quantize == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"quantize must be one of {QUANTIZE_CHOICES}, got {quantize!r}")


def quantize_linear_layers(model: nn.Module, quantize: Quantize = "4bit", quant_type: str = "nf4",
                           double_quant: bool = True, compute_dtype: torch.dtype = torch.float32,
                           skip: tuple[str, ...] = ("lm_head", "classifier", "score")) -> nn.Module:
    """Replace, in place, every plain ``nn.Linear`` of an in-memory model by a bitsandbytes layer holding its
    weight quantized (``"4bit"``: ``quant_type`` ``"nf4"`` or ``"fp4"``, ``double_quant`` for the statistics;
    ``"8bit"``: LLM.int8() with the default outlier threshold 6). Layers named in ``skip`` stay (by default the
    output heads, which transformers keeps unquantized too). For a checkpoint on disk, use ``quantization_config``
    instead."""
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize must be one of {QUANTIZE_CHOICES}, got {quantize!r}")
    for name, module in list(model.named_modules()):
        parent_name, _, child = name.rpartition(".")
        if type(module) is nn.Linear and child not in skip:
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, _quantized_copy(module, quantize, quant_type, double_quant, compute_dtype))
    # marked as transformers' bitsandbytes quantizer marks a model (PEFT picks its bitsandbytes LoRA layers by it)
    setattr(model, f"is_loaded_in_{quantize}", True)
    return model


def _quantized_copy(linear: nn.Linear, quantize: Quantize, quant_type: str, double_quant: bool,
                    compute_dtype: torch.dtype) -> nn.Module:
    shape = (linear.in_features, linear.out_features, linear.bias is not None)
    data = linear.weight.data.to("cpu")
    layer: nn.Linear
    if quantize == "4bit":
        layer = bnb.nn.Linear4bit(*shape, compute_dtype=compute_dtype, compress_statistics=double_quant,
                                  quant_type=quant_type, device="meta")
        layer.weight = bnb.nn.Params4bit(data, requires_grad=False, compress_statistics=double_quant,
                                         quant_type=quant_type, module=layer)
    else:
        layer = bnb.nn.Linear8bitLt(*shape, has_fp16_weights=False, threshold=6.0, device="meta")
        layer.weight = bnb.nn.Int8Params(data, requires_grad=False, has_fp16_weights=False)
    layer.bias = linear.bias
    return layer.to(linear.weight.device).train(linear.training)
