"""A tiny Llama as a base GGUF file (token ids only, no tokenizer), and llama.cpp's logits for token ids."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch

from kasa_peft.interop.gguf.naming import GgufLayout
from kasa_peft.interop.gguf.writing import Field, Tensor, write_gguf

U32, F32, STRING = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.STRING


def llama_rows_by_hand(rows: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's q/k row order, index by index: per head, rows i and d/2 + i become neighbours 2i, 2i + 1."""
    d = rows.shape[0] // n_head
    order = [h * d + half * d // 2 + i for h in range(n_head) for i in range(d // 2) for half in (0, 1)]
    return rows[order]


def write_base_gguf(model: torch.nn.Module, path: Path, matrix_type=gguf.GGMLQuantizationType.F32) -> Path:
    """``model`` (a tiny LlamaForCausalLM) as a llama.cpp GGUF file, matrices in ``matrix_type`` where they fit."""
    config, layout = model.config, GgufLayout.of(model.config)
    arch = layout.architecture
    fields = [Field(gguf.Keys.General.TYPE, "model", STRING),
              Field(gguf.Keys.LLM.CONTEXT_LENGTH.format(arch=arch), config.max_position_embeddings, U32),
              Field(gguf.Keys.LLM.EMBEDDING_LENGTH.format(arch=arch), config.hidden_size, U32),
              Field(gguf.Keys.LLM.FEED_FORWARD_LENGTH.format(arch=arch), config.intermediate_size, U32),
              Field(gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch), config.num_hidden_layers, U32),
              Field(gguf.Keys.LLM.VOCAB_SIZE.format(arch=arch), config.vocab_size, U32),
              Field(gguf.Keys.Attention.HEAD_COUNT.format(arch=arch), config.num_attention_heads, U32),
              Field(gguf.Keys.Attention.HEAD_COUNT_KV.format(arch=arch), config.num_key_value_heads, U32),
              Field(gguf.Keys.Attention.LAYERNORM_RMS_EPS.format(arch=arch), config.rms_norm_eps, F32),
              Field(gguf.Keys.Rope.FREQ_BASE.format(arch=arch), config.rope_parameters["rope_theta"], F32),
              Field(gguf.Keys.Rope.DIMENSION_COUNT.format(arch=arch), config.head_dim, U32),
              Field(gguf.Keys.Tokenizer.MODEL, "no_vocab", STRING)]
    tensors = []
    for name, value in model.state_dict().items():
        gguf_name = layout.tensor_name(name)
        values = layout.to_llama_rows(gguf_name, value.detach().float()).numpy()
        qtype = matrix_type if values.ndim == 2 and values.shape[1] % 32 == 0 else gguf.GGMLQuantizationType.F32
        tensors.append(Tensor(gguf_name, gguf.quants.quantize(values, qtype), qtype))
    return write_gguf(path, arch, fields, tensors)


def llama_cpp_logits(model_path: Path, tokens: list[int], lora_path: Path | None = None) -> np.ndarray:
    """llama.cpp's next-token logits at every position of ``tokens`` (float32, positions x vocab)."""
    from llama_cpp import Llama

    llm = Llama(str(model_path), lora_path=str(lora_path) if lora_path else None, n_ctx=64, n_batch=64,
                logits_all=True, n_threads=1, verbose=False)
    llm.eval(tokens)
    return np.array(llm.scores[:len(tokens)], dtype=np.float32)
