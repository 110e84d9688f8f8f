"""Where a Hugging Face model's tensors live in llama.cpp: architecture, tensor names and q/k row order.

llama.cpp names tensors ``blk.N.attn_q.weight`` etc. (the ``gguf`` package's ``TensorNameMap``). For the
Llama architecture its converter (``convert_hf_to_gguf.py``, ``LlamaModel.permute``) also reorders the rows
of ``q_proj`` and ``k_proj`` within each head, because Hugging Face's rotary embedding rotates dimension
``i`` with ``i + d/2`` (``rotate_half``) while llama.cpp's rotates ``2i`` with ``2i + 1``:

    rows of head h: [0, 1, ..., d/2 - 1, d/2, ..., d - 1]  ->  [0, d/2, 1, d/2 + 1, ..., d/2 - 1, d - 1]

A weight change ``P Q`` of such a layer must be written with the same row order, i.e. ``P``'s rows
permuted (``Q`` acts on the input side and is untouched). Qwen2 keeps Hugging Face's order (NEOX rope).
"""

from __future__ import annotations

from dataclasses import dataclass

import gguf
import torch

# Hugging Face ``model_type`` -> (llama.cpp architecture, q/k rows permuted), as convert_hf_to_gguf.py maps them
# (LlamaForCausalLM and MistralForCausalLM -> LlamaModel, Qwen2ForCausalLM -> Qwen2Model).
ARCHITECTURES: dict[str, tuple[gguf.MODEL_ARCH, bool]] = {
    "llama": (gguf.MODEL_ARCH.LLAMA, True),
    "mistral": (gguf.MODEL_ARCH.LLAMA, True),
    "qwen2": (gguf.MODEL_ARCH.QWEN2, False),
}


class UnsupportedArchitecture(ValueError):
    """The model's architecture has no llama.cpp tensor mapping here."""


@dataclass(frozen=True)
class GgufLayout:
    """A model's llama.cpp architecture and the map from its parameter names to llama.cpp tensor names."""

    architecture: str  # general.architecture, e.g. "llama"
    names: gguf.TensorNameMap
    rope_permuted: bool
    n_head: int
    n_head_kv: int

    @classmethod
    def of(cls, config) -> GgufLayout:
        """The layout for a transformers config; unmapped model types raise :class:`UnsupportedArchitecture`."""
        model_type = getattr(config, "model_type", None)
        if model_type not in ARCHITECTURES:
            raise UnsupportedArchitecture(
                f"GGUF export knows the Llama family ({', '.join(sorted(ARCHITECTURES))}), not model_type "
                f"{model_type!r}; export with --format lora and convert it with llama.cpp's convert_lora_to_gguf.py")
        arch, rope_permuted = ARCHITECTURES[model_type]
        n_head = config.num_attention_heads
        return cls(gguf.MODEL_ARCH_NAMES[arch], gguf.get_tensor_name_map(arch, config.num_hidden_layers),
                   rope_permuted, n_head, getattr(config, "num_key_value_heads", None) or n_head)

    def tensor_name(self, parameter: str) -> str:
        """``model.layers.0.self_attn.q_proj.weight`` -> ``blk.0.attn_q.weight``."""
        name = self.names.get_name(parameter, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UnsupportedArchitecture(f"{parameter!r} has no llama.cpp tensor name for {self.architecture}")
        return name

    def to_llama_rows(self, tensor_name: str, rows: torch.Tensor) -> torch.Tensor:
        """``rows`` (a weight, bias or LoRA B of ``tensor_name``) in llama.cpp's row order."""
        if not self.rope_permuted:
            return rows
        if tensor_name.startswith("blk.") and ".attn_q." in tensor_name:
            return rope_permute(rows, self.n_head)
        if tensor_name.startswith("blk.") and ".attn_k." in tensor_name:
            return rope_permute(rows, self.n_head_kv)
        return rows


def rope_permute(rows: torch.Tensor, n_head: int) -> torch.Tensor:
    """Interleave the two halves of each head's rows (``LlamaModel.permute`` of convert_hf_to_gguf.py)."""
    head_half = rows.shape[0] // n_head // 2
    return rows.reshape(n_head, 2, head_half, *rows.shape[1:]).transpose(1, 2).reshape(rows.shape)
