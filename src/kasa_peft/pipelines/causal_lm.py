"""Causal-LM building blocks: prompt/target encoding, padding, batched generation, option scoring.

One boundary rule everywhere: a prompt is tokenised alone (with the tokenizer's special tokens, or
rendered by its chat template), and whatever follows it (a training target, an answer option) is
tokenised on its own without special tokens and appended. That is exactly the token sequence a model
sees when it generates the continuation after the prompt, so training, generation and scoring agree.
With byte-level BPE tokenizers (GPT-2, SmolLM2) put a separating space at the start of the
continuation (``"Answer:"`` + ``" true"``), not at the end of the prompt: a trailing space becomes a
token of its own that the model rarely saw before a word.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from tqdm.auto import tqdm

IGNORE_INDEX = -100  # label value the Hugging Face losses skip


Conversation = list[dict[str, str]]  # chat messages, {"role": ..., "content": ...}


def encode_prompt(tokenizer, prompt: str | Conversation, use_chat_template: bool = False) -> list[int]:
    """Token ids of ``prompt`` as generation receives them.

    Plain: ``tokenizer(prompt)`` with the tokenizer's own special tokens (e.g. Llama's BOS).
    Chat: the prompt as one user turn (or, given a list of messages, that conversation), rendered with the
    generation prompt (the assistant header) and tokenised without adding special tokens, since the template
    writes its own.
    """
    if not use_chat_template:
        if not isinstance(prompt, str):
            raise ValueError("a conversation (a list of messages) needs the chat template: use_chat_template=True")
        return list(tokenizer(prompt)["input_ids"])
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this tokenizer has no chat template: set tokenizer.chat_template or do not ask for one "
                         "(use_chat_template=False)")
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_continuation(tokenizer, text: str) -> list[int]:
    """Token ids of text that follows a prompt: tokenised alone, no special tokens added."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def padding_id(tokenizer) -> int:
    """The id to pad with: the pad token, else EOS (GPT-2 and Llama tokenizers ship without a pad token)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    raise ValueError("the tokenizer has neither a pad nor an EOS token: set tokenizer.pad_token")


def truncate_prompt_target(prompt_ids: Sequence[int], target_ids: Sequence[int], max_length: int,
                           special_ids: Sequence[int] = ()) -> tuple[list[int], list[int]]:
    """Fit ``prompt + target`` into ``max_length`` tokens, keeping the target where possible.

    The prompt's leading special tokens (BOS, a chat template's opening token) are always kept. The
    rest of the prompt is cut from the left first; only when the target alone does not fit in what
    remains is the target cut, from the right.
    """
    special = set(special_ids)
    prefix_length = next((i for i, t in enumerate(prompt_ids) if t not in special), len(prompt_ids))
    prefix, body = list(prompt_ids[:prefix_length]), list(prompt_ids[prefix_length:])
    room = max_length - len(prefix)
    if room < 1:
        raise ValueError(f"max_length={max_length} leaves no room for the target after the prompt's "
                         f"{len(prefix)} leading special tokens: raise max_length")
    target = list(target_ids[:room])
    body_room = room - len(target)
    kept_body = body[max(0, len(body) - body_room):] if body_room else []
    return prefix + kept_body, target


def encode_prompt_target(tokenizer, prompt: str, target: str, max_length: int, use_chat_template: bool = False,
                         train_on_prompt: bool = False) -> dict[str, list[int]]:
    """One training example: ``input_ids = prompt_ids + target_ids + [EOS]`` and aligned ``labels``.

    ``labels`` equal ``input_ids`` on the target (and its EOS) and ``IGNORE_INDEX`` on the prompt, so
    the loss is on the target only; ``train_on_prompt=True`` puts the loss on every token. Labels are
    not shifted: Hugging Face causal LMs shift them internally. See ``truncate_prompt_target`` for how
    long examples are cut.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token, so the model could not learn where a target ends: "
                         "set tokenizer.eos_token")
    prompt_ids, target_ids = truncate_prompt_target(
        encode_prompt(tokenizer, prompt, use_chat_template),
        encode_continuation(tokenizer, target) + [tokenizer.eos_token_id],
        max_length, tokenizer.all_special_ids)
    input_ids = prompt_ids + target_ids
    labels = list(input_ids) if train_on_prompt else [IGNORE_INDEX] * len(prompt_ids) + target_ids
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def pad_sequences(sequences: Sequence[Sequence[int]], value: int, side: str = "right",
                  multiple_of: int | None = None) -> torch.Tensor:
    """Stack ragged id lists into a (batch, longest) long tensor, filling with ``value`` on ``side``."""
    length = max(len(s) for s in sequences)
    if multiple_of:
        length = -(-length // multiple_of) * multiple_of
    padded = torch.full((len(sequences), length), value, dtype=torch.long)
    for row, sequence in zip(padded, sequences, strict=True):
        if side == "right":
            row[:len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
        else:
            row[length - len(sequence):] = torch.as_tensor(sequence, dtype=torch.long)
    return padded


@dataclass
class CausalLMCollator:
    """Right-pads examples from ``encode_prompt_target`` into a training batch.

    ``input_ids`` are padded with ``pad_token_id`` (``padding_id(tokenizer)``), ``attention_mask``
    with 0 and ``labels`` with ``IGNORE_INDEX``, so padding is neither attended to nor trained on.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        def pad(key: str, value: int) -> torch.Tensor:
            return pad_sequences([f[key] for f in features], value, "right", self.pad_to_multiple_of)

        return {"input_ids": pad("input_ids", self.pad_token_id), "attention_mask": pad("attention_mask", 0),
                "labels": pad("labels", IGNORE_INDEX)}


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, so memory errors show at once)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` and ``torch.inference_mode()`` for the block; the training mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def generate_texts(model, tokenizer, prompts: Sequence[str | Conversation], *, batch_size: int = 8,
                   max_new_tokens: int = 64, num_beams: int = 1, length_penalty: float = 1.0,
                   no_repeat_ngram_size: int = 0, do_sample: bool = False, use_chat_template: bool = False,
                   progress: bool = True) -> list[str]:
    """The text each prompt's continuation decodes to (special tokens skipped, stripped), in input order.

    Prompts are encoded with ``encode_prompt`` and decoded by ``generate_ids``; E2E in the LoRA paper uses
    ``num_beams=10, length_penalty=0.9, no_repeat_ngram_size=4``.
    """
    encoded = [encode_prompt(tokenizer, prompt, use_chat_template) for prompt in prompts]
    generated = generate_ids(model, encoded, pad_token_id=padding_id(tokenizer), eos_token_id=tokenizer.eos_token_id,
                             batch_size=batch_size, max_new_tokens=max_new_tokens, num_beams=num_beams,
                             length_penalty=length_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                             do_sample=do_sample, progress=progress)
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in generated]


def generate_ids(model, prompts: Sequence[Sequence[int]], *, pad_token_id: int, eos_token_id: int | None,
                 batch_size: int = 8, max_new_tokens: int = 64, num_beams: int = 1, length_penalty: float = 1.0,
                 no_repeat_ngram_size: int = 0, do_sample: bool = False, progress: bool = True) -> list[list[int]]:
    """The new token ids ``model.generate`` continues each prompt (token ids) with, up to and including the
    first ``eos_token_id`` (the padding after it dropped), in input order.

    Prompts are batched by length and left-padded (padding the ids directly, so ``tokenizer.padding_side`` is
    never touched), so every row's new tokens start at the same position. Decoding settings go to
    ``model.generate`` as given.
    """
    generated: list[list[int]] = [[] for _ in prompts]
    with evaluating(model), tqdm(total=len(prompts), desc="generate", unit="prompt", disable=not progress) as bar:
        for batch in length_sorted_batches([len(ids) for ids in prompts], batch_size):
            input_ids = pad_sequences([prompts[i] for i in batch], pad_token_id, "left")
            attention_mask = pad_sequences([[1] * len(prompts[i]) for i in batch], 0, "left")
            output = model.generate(
                input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
                max_new_tokens=max_new_tokens, num_beams=num_beams, length_penalty=length_penalty,
                no_repeat_ngram_size=no_repeat_ngram_size, do_sample=do_sample,
                pad_token_id=pad_token_id, eos_token_id=eos_token_id)
            for index, row in zip(batch, output[:, input_ids.shape[1]:].tolist(), strict=True):
                generated[index] = row[:row.index(eos_token_id) + 1] if eos_token_id in row else row
            bar.update(len(batch))
    return generated


# Which implementation `option_logliks` is, recorded with every evaluation that scores options (its numbers can
# differ between implementations by float rounding, enough to flip a near-tied choice). "prompt-cache": each prompt
# runs once and its options are scored on its key/value cache (since commit 1a6b858); the scorer before it,
# "per-option", ran one forward pass over each prompt + option.
OPTION_SCORER = "prompt-cache"


def option_logliks(model, tokenizer, prompts: list[str], options: list[list[str]], *, batch_size: int = 8,
                   use_chat_template: bool = False, progress: bool = True) -> list[list[float]]:
    """``log p(option | prompt) = sum_t log p(o_t | prompt, o_<t)`` for every option of every prompt.

    Each option is encoded as a continuation of its prompt (``encode_continuation``), the same rule
    as ``encode_prompt_target``; no EOS is added. A prompt is run once and its key/value cache is shared by
    its options, which are scored together, right-padded, ``batch_size`` at a time: the same numbers as one
    forward pass over each ``prompt + option`` (up to float rounding), at about ``1 / n`` of the cost for
    ``n`` options of a long prompt.
    """
    if len(prompts) != len(options):
        raise ValueError(f"got {len(prompts)} prompts but {len(options)} option lists: give one list per prompt")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    cache_keyword = _cache_keyword(model)
    pad_id = padding_id(tokenizer)
    scores = []
    with evaluating(model), tqdm(total=sum(map(len, options)), desc="score options", unit="option",
                                 disable=not progress) as bar:
        for i, (prompt, row) in enumerate(zip(prompts, options, strict=True)):
            prompt_ids = encode_prompt(tokenizer, prompt, use_chat_template)
            continuations = [encode_continuation(tokenizer, option) for option in row]
            if not prompt_ids or not all(continuations):
                raise ValueError(f"prompt {i} or one of its options encodes to no tokens, so it cannot be scored")
            output = model(input_ids=torch.tensor([prompt_ids], device=model.device), use_cache=True,
                           logits_to_keep=1)
            first = output.logits[0, -1].float().log_softmax(-1)  # predicts every option's first token
            row_scores = []
            for start in range(0, len(row), batch_size):
                chunk = continuations[start:start + batch_size]
                cache = copy.deepcopy(getattr(output, cache_keyword))
                cache.batch_repeat_interleave(len(chunk))
                input_ids = pad_sequences(chunk, pad_id).to(model.device)
                attention_mask = pad_sequences([[1] * (len(prompt_ids) + len(c)) for c in chunk], 0).to(model.device)
                logits = model(input_ids=input_ids, attention_mask=attention_mask, **{cache_keyword: cache}).logits
                for k, continuation in enumerate(chunk):
                    # the logits at option position t predict option token t + 1
                    log_probs = logits[k, :len(continuation) - 1].float().log_softmax(-1)
                    rest = torch.as_tensor(continuation[1:], device=log_probs.device)
                    row_scores.append((first[continuation[0]] + log_probs.gather(-1, rest[:, None]).sum()).item())
                bar.update(len(chunk))
            scores.append(row_scores)
    return scores


def _cache_keyword(model: nn.Module) -> str:
    """The keyword a causal LM's forward takes its key/value cache by: transformers 5 renamed ``past_key_values``
    to ``cache``. A PEFT wrapper passes keywords on to the model it wraps."""
    inner = cast(Any, model).get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def choose_option(logliks: list[list[float]], normalize_by_length: list[list[int]] | None = None) -> list[int]:
    """Index of the best option per question: ``argmax_j loglik_j`` or ``argmax_j loglik_j / length_j``.

    ``normalize_by_length`` holds each option's length in whatever unit the caller chooses: tokens
    (``len(encode_continuation(tokenizer, option))``) or characters (lm-eval-harness ``acc_norm``
    uses bytes). Ties go to the first option.
    """
    if normalize_by_length is not None:
        if [len(r) for r in normalize_by_length] != [len(r) for r in logliks]:
            raise ValueError("normalize_by_length must have one length per option, shaped like logliks")
        if any(n <= 0 for row in normalize_by_length for n in row):
            raise ValueError("option lengths must be positive to normalise by them")
        logliks = [[s / n for s, n in zip(row, lengths, strict=True)]
                   for row, lengths in zip(logliks, normalize_by_length, strict=True)]
    if any(not row for row in logliks):
        raise ValueError("every question needs at least one option")
    return [max(range(len(row)), key=row.__getitem__) for row in logliks]
