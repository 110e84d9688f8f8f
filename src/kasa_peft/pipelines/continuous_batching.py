"""Greedy decoding with continuous batching: a finished response leaves the batch, a waiting prompt takes its place.

``model.generate`` decodes a batch until its longest response stops: a row that has produced EOS is still
computed, as padding, until every row is done or the budget is spent, so one response that never stops keeps
the whole batch running to ``max_new_tokens``. Here at most ``batch_size`` responses are decoded together, one
token per step, on one shared key/value cache that is reused from step to step:

* prompts wait longest first (so rows that decode together have similar lengths); when a row stops (EOS, or
  ``max_new_tokens`` new tokens) it is dropped from the batch and from every layer's cache, and as many waiting
  prompts as there are free rows are prefilled together and join;
* the cache is left-padded: row ``b`` holds its tokens at the right end of each ``[B, heads, T, head_dim]``
  layer, and a ``[B, T]`` attention mask marks them. A joining group's cache is padded on the left to the
  batch's length (or the batch's to the group's) and stacked under it; columns that are padding in every row
  are cut off, so the batch never attends over more columns than its longest live row holds;
* positions are explicit (``position_ids`` is the row's own count of tokens), so padding never shifts a token's
  position, and every forward pass computes the logits of the last position only.

Each row's tokens are the greedy continuation of its prompt, as ``generate(do_sample=False)`` gives them: padded
keys are masked out, so batch shapes change only the float rounding of sums (the tests check identical tokens
against one-prompt-at-a-time ``generate`` on tiny models in float64; ``benchmarks/decoding.py`` counts identical
responses on SmolLM2 in float32).

It needs a cache of plain full-attention layers (``transformers.cache_utils.DynamicLayer``: Llama, GPT-2,
SmolLM2, Qwen2, ...); sliding-window or recurrent layers are refused with a message to decode with ``generate``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers.cache_utils import DynamicCache, DynamicLayer

from .causal_lm import _cache_keyword, evaluating, pad_sequences


def greedy_decode(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, eos_token_ids: Collection[int],
                  pad_token_id: int, batch_size: int = 8, progress: bool = True) -> list[list[int]]:
    """The new token ids of every prompt's greedy continuation, in input order: up to and including the first
    of ``eos_token_ids``, at most ``max_new_tokens`` of them.

    ``prompts`` are token ids (``causal_lm.encode_prompt``), none empty. At most ``batch_size`` are decoded at a
    time; see the module docstring for how rows leave and join the batch.
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size and max_new_tokens must be at least 1, got {batch_size} and {max_new_tokens}")
    if any(len(ids) == 0 for ids in prompts):
        raise ValueError("a prompt encodes to no tokens, so there is nothing to continue")
    keyword = _cache_keyword(model)
    stops = set(eos_token_ids)
    waiting = deque(sorted(range(len(prompts)), key=lambda i: -len(prompts[i])))
    outputs: list[list[int]] = [[] for _ in prompts]
    live: list[int] = []  # the prompt index of each batch row
    cache: DynamicCache | None = None
    mask = torch.zeros(0, 0, dtype=torch.long)  # [rows, cache columns]: 1 where the column holds the row's token
    last = torch.zeros(0, dtype=torch.long)  # each row's newest token, not yet in the cache
    with evaluating(model), tqdm(total=len(prompts), desc="generate", unit="prompt", disable=not progress) as bar:
        while waiting or live:
            if waiting and len(live) < batch_size:
                joining = [waiting.popleft() for _ in range(min(batch_size - len(live), len(waiting)))]
                group_cache, group_mask, tokens = _prefill(model, keyword, [prompts[i] for i in joining],
                                                           pad_token_id)
                cache, mask = _stack(cache, mask, group_cache, group_mask)
                last = torch.cat([last, tokens])
                rows = range(len(live), len(live) + len(joining))
                live.extend(joining)
            else:
                mask = torch.cat([mask, torch.ones(len(live), 1, dtype=torch.long)], dim=1)
                output = model(input_ids=last[:, None].to(model.device), attention_mask=mask.to(model.device),
                               position_ids=(mask.sum(1, keepdim=True) - 1).to(model.device), use_cache=True,
                               logits_to_keep=1, **{keyword: cache})
                last = tokens = output.logits[:, -1].argmax(-1).cpu()
                rows = range(len(live))
            for row, token in zip(rows, tokens.tolist(), strict=True):
                outputs[live[row]].append(token)
            done = [row for row, index in enumerate(live)
                    if outputs[index][-1] in stops or len(outputs[index]) == max_new_tokens]
            if done:
                keep = [row for row in range(len(live)) if row not in done]
                assert cache is not None  # rows are live, so a group was prefilled
                cache, mask = _select(cache, mask, keep)
                last = last[keep]
                live = [live[row] for row in keep]
                bar.update(len(done))
    return outputs


def _prefill(model, keyword: str, prompts: list[Sequence[int]], pad_token_id: int
             ) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
    """Run left-padded ``prompts`` through the model: their cache, attention mask and greedy first tokens."""
    input_ids = pad_sequences(prompts, pad_token_id, "left")
    mask = pad_sequences([[1] * len(ids) for ids in prompts], 0, "left")
    output = model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device),
                   position_ids=(mask.cumsum(1) - 1).clamp(min=0).to(model.device), use_cache=True, logits_to_keep=1)
    cache = getattr(output, keyword)
    if not isinstance(cache, DynamicCache) or any(type(layer) is not DynamicLayer for layer in cache.layers):
        raise ValueError(f"continuous batching needs a cache of full-attention layers, and {type(model).__name__} "
                         f"returned {type(cache).__name__} with layers "
                         f"{sorted({type(layer).__name__ for layer in getattr(cache, 'layers', [])})}: decode this "
                         "model with `generate` (generation.Decoding with continuous=False)")
    return cache, mask, output.logits[:, -1].argmax(-1).cpu()


def _stack(cache: DynamicCache | None, mask: torch.Tensor, group_cache: DynamicCache, group_mask: torch.Tensor
           ) -> tuple[DynamicCache, torch.Tensor]:
    """The batch's cache and mask with a prefilled group's rows below them, the shorter side padded on the left."""
    if cache is None or mask.shape[0] == 0:
        return group_cache, group_mask
    length = max(mask.shape[1], group_mask.shape[1])
    for layer, group_layer in zip(_layers(cache), _layers(group_cache), strict=True):
        layer.keys = torch.cat([_pad_left(layer.keys, length), _pad_left(group_layer.keys, length)])
        layer.values = torch.cat([_pad_left(layer.values, length), _pad_left(group_layer.values, length)])
    return cache, torch.cat([_pad_left(mask, length), _pad_left(group_mask, length)])


def _select(cache: DynamicCache, mask: torch.Tensor, rows: list[int]) -> tuple[DynamicCache, torch.Tensor]:
    """Only ``rows`` of the cache and mask, without the leading columns that are padding in every one of them."""
    mask = mask[rows]
    if not rows:
        return cache, mask
    start = int(mask.any(0).long().argmax())  # the first column some row uses
    for layer in _layers(cache):
        layer.keys = layer.keys[rows, :, start:]
        layer.values = layer.values[rows, :, start:]
    return cache, mask[:, start:]


def _layers(cache: DynamicCache) -> list[Any]:
    """The cache's layers, each a ``DynamicLayer`` whose ``keys`` and ``values`` are tensors (`_prefill` checked)."""
    return list(cache.layers)


def _pad_left(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """``tensor`` padded with zeros before its sequence dimension (dim 1 of a mask, dim 2 of a cache layer)."""
    missing = length - tensor.shape[1 if tensor.dim() == 2 else 2]
    if missing == 0:
        return tensor
    return F.pad(tensor, (missing, 0) if tensor.dim() == 2 else (0, 0, missing, 0))
