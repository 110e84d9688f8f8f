"""Export a KaSA adapter as a llama.cpp LoRA adapter GGUF (``llama-cli --lora``, Ollama's ``ADAPTER``).

The adapter's change of a weight is the exact rank-(r + d) pair of :mod:`..lora_export`:

    lora_a = [A; vt]                          ((r + d) x in)
    lora_b = [B diag(scale sigma), -us]       (out x (r + d))

llama.cpp adds ``scale * lora_b (lora_a x)`` with ``scale = adapter.lora.alpha / rank``, one ``alpha`` for the
file and ``rank`` the size of each ``lora_b``'s last axis (``llama_adapter_lora_weight::get_scale``). A layer's
rank is ``r + d``, which differs between layers with ``drop_rank="auto"`` or an integer ``d``, so every pair is
padded with zeros to the largest rank R (``[lora_a; 0]``, ``[lora_b, 0]``: the same product) and ``alpha = R``
makes every scale 1. The
tensors are stored as float32 numpy arrays of those shapes (the writer reverses them into ggml's
``ne``: ``lora_a.ne = [in, R]``, ``lora_b.ne = [R, out]``, what ``llama_adapter_lora_init`` checks),
named ``<base tensor>.lora_a`` / ``.lora_b``, with ``lora_b``'s rows in llama.cpp's q/k order
(:mod:`.naming`).
"""

from __future__ import annotations

import os
from pathlib import Path

import gguf
from torch import nn
from torch.nn import functional as F

from ...core import kasa_state
from ..base_model import adapted_model
from ...analysis.factors import delta_factors
from .merged import adapted_layers, gguf_base
from .naming import GgufLayout
from .writing import Field, Tensor, write_gguf

STRING, FLOAT32 = gguf.GGUFValueType.STRING, gguf.GGUFValueType.FLOAT32


class ModulesToSaveInAdapter(ValueError):
    """A LoRA GGUF holds only low-rank pairs; fully trained modules do not fit in it."""


def export_gguf_adapter(source: str | os.PathLike | nn.Module, out: str | os.PathLike,
                        base_model: nn.Module | str | os.PathLike | None = None,
                        adapter_name: str | None = None) -> Path:
    """Write ``source`` (a KaSA adapter directory, or a model carrying KaSA adapters) as a LoRA GGUF ``out``.

    ``out`` must not exist; it is written atomically. Returns ``out``.

    Raises:
        UnsupportedArchitecture: the base is not of the Llama family (llama, mistral, qwen2).
        ModulesToSaveInAdapter: the adapter trains whole modules (``modules_to_save``).
    """
    base_model, _ = gguf_base(source, base_model)
    with adapted_model(source, base_model, adapter_name) as (model, name):
        layout = GgufLayout.of(model.config)
        config = kasa_state(model).configs[name]
        if config.modules_to_save:
            raise ModulesToSaveInAdapter(
                f"the adapter trains whole modules ({', '.join(config.modules_to_save)}), which a llama.cpp LoRA "
                "GGUF cannot hold; export the merged model instead: --format merged-gguf")
        pairs = {}
        for module_name, layer in adapted_layers(model, name):
            adapter = layer.adapter(name)
            pairs[layout.tensor_name(f"{module_name}.weight")] = delta_factors(
                adapter.A, adapter.B, adapter.sigma, adapter.dropped_us, adapter.dropped_vt, adapter.scale)
        rank = max(lora_a.shape[0] for _, lora_a in pairs.values())
        tensors = []
        for base_name, (lora_b, lora_a) in pairs.items():
            padding = rank - lora_a.shape[0]
            lora_a, lora_b = F.pad(lora_a, (0, 0, 0, padding)), F.pad(lora_b, (0, padding))
            tensors.append(Tensor(f"{base_name}.lora_a", lora_a.float().numpy()))
            tensors.append(Tensor(f"{base_name}.lora_b", layout.to_llama_rows(base_name, lora_b).float().numpy()))
        fields = [Field(gguf.Keys.General.TYPE, gguf.GGUFType.ADAPTER, STRING),
                  Field(gguf.Keys.Adapter.TYPE, "lora", STRING),
                  Field(gguf.Keys.Adapter.LORA_ALPHA, float(rank), FLOAT32)]
        return write_gguf(out, layout.architecture, fields, tensors)
