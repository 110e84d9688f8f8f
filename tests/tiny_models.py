"""Tiny randomly initialised transformers models for unit tests (seconds, no downloads)."""

from __future__ import annotations

import torch
from transformers import (
    BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
)

VOCAB = 128


def tiny_bert(num_labels: int = 2, seed: int = 0, hidden_size: int = 32,
              intermediate_size: int = 48) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=hidden_size, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=intermediate_size, max_position_embeddings=64, num_labels=num_labels)
    return BertForSequenceClassification(config).eval()


def tiny_llama(seed: int = 0, hidden_size: int = 32, intermediate_size: int = 48) -> LlamaForCausalLM:
    """Llama with in > out layers (by default down_proj 48 -> 32, k/v_proj 32 -> 16) to exercise k = min(out, in)."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


# per q_proj / v_proj of tiny_llama's two layers: the 4 smallest singular values under a spectrum of ones, and the d
# that drop_rank="auto" with r = 4 and budget MIXED_BUDGET drops. By hand, share(d) = sqrt(sum of the d smallest s^2 /
# sum of all s^2): layer 0 q_proj 4e-4 at d = 4; v_proj 0.14 at d = 1 (12 ones + 4 x 0.25 = 13); layer 1 q_proj
# 0.0026 at d = 2, 0.094 at d = 3; v_proj 0.0028 at d = 1, 0.14 at d = 2.
MIXED_TAILS = {"model.layers.0.self_attn.q_proj": ([1e-3] * 4, 4), "model.layers.0.self_attn.v_proj": ([0.5] * 4, 0),
               "model.layers.1.self_attn.q_proj": ([0.01, 0.01, 0.5, 0.5], 2),
               "model.layers.1.self_attn.v_proj": ([0.01, 0.5, 0.5, 0.5], 1)}
MIXED_BUDGET = 0.05


def with_spectrum(singular_values: list[float] | torch.Tensor, shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """A float64 (out, in) matrix ``U diag(s) V^T`` with random orthonormal ``U``, ``V`` and the given ``s``."""
    generator = torch.Generator().manual_seed(seed)
    s = torch.as_tensor(singular_values, dtype=torch.float64)
    u, _ = torch.linalg.qr(torch.randn(shape[0], len(s), generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(shape[1], len(s), generator=generator, dtype=torch.float64))
    return (u * s) @ v.T


def tiny_llama_with_tails(seed: int = 0) -> LlamaForCausalLM:
    """`tiny_llama` whose q_proj / v_proj weights have the spectra of ``MIXED_TAILS``: ones, then the tail
    (k = 32 for q_proj, 16 for v_proj), so an automatic truncation drops a different d from each."""
    model = tiny_llama(seed)
    with torch.no_grad():
        for i, (name, (tail, _)) in enumerate(MIXED_TAILS.items()):
            weight = model.get_submodule(name).weight
            values = [1.0] * (min(weight.shape) - len(tail)) + sorted(tail, reverse=True)
            weight.copy_(with_spectrum(values, tuple(weight.shape), seed=i))
    return model


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    return GPT2LMHeadModel(config).eval()


def token_batch(batch: int = 3, length: int = 7, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=generator)
