"""What the causal-LM task pipelines (E2E, commonsense, SFT) share: prompt/target training data and decoding.

Training examples are ``prompt + target + EOS`` with the loss on the target only
(:func:`~kasa_peft.pipelines.causal_lm.encode_prompt_target`); evaluation generates from the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from .base import ModelTask
from .causal_lm import (
    CausalLMCollator, Conversation, encode_prompt, encode_prompt_target, generate_ids, option_logliks, padding_id,
)
from .config import RunConfig, required
from .continuous_batching import greedy_decode


@dataclass(frozen=True)
class Completion:
    """One decoded response: its text, its number of new tokens, and whether it stopped at the budget
    (``max_new_tokens`` reached before EOS) rather than by itself."""

    text: str
    new_tokens: int
    hit_budget: bool


@dataclass(frozen=True)
class Decoding:
    """How evaluation decodes; ``use_chat_template=None`` means "when the tokenizer has one".

    ``continuous=True`` decodes greedy settings (one beam, no n-gram ban) with continuous batching
    (:mod:`~kasa_peft.pipelines.continuous_batching`: the same tokens as ``generate``, without computing rows
    that have stopped); other settings always go to ``model.generate``.
    """

    batch_size: int
    max_new_tokens: int
    num_beams: int
    length_penalty: float
    no_repeat_ngram_size: int
    use_chat_template: bool | None
    continuous: bool = False

    @classmethod
    def from_config(cls, config: RunConfig, continuous: bool = False) -> "Decoding":
        return cls(config.evaluation_batch_size,
                   required(config.max_new_tokens, "max_new_tokens"), required(config.num_beams, "num_beams"),
                   required(config.length_penalty, "length_penalty"),
                   required(config.no_repeat_ngram_size, "no_repeat_ngram_size"), config.use_chat_template, continuous)

    @property
    def batches_continuously(self) -> bool:
        """Whether greedy decoding goes to continuous batching: asked for, with one beam and no n-gram ban."""
        return self.continuous and self.num_beams == 1 and self.no_repeat_ngram_size == 0

    def __str__(self) -> str:
        search = f"beam search with {self.num_beams} beams" if self.num_beams > 1 else "greedy decoding"
        return f"{search}, up to {self.max_new_tokens} new tokens each"

    def chat_template(self, tokenizer) -> bool:
        """Whether prompts go through the tokenizer's chat template."""
        if self.use_chat_template is None:
            return bool(getattr(tokenizer, "chat_template", None))
        return self.use_chat_template

    def generate(self, model: nn.Module, tokenizer, prompts: Sequence[str | Conversation]) -> list[str]:
        """The decoded continuation of every prompt (a text, or a conversation for the chat template)."""
        return [completion.text for completion in self.complete(model, tokenizer, prompts)]

    def complete(self, model: nn.Module, tokenizer, prompts: Sequence[str | Conversation]) -> list[Completion]:
        """Every prompt's continuation (special tokens skipped, stripped), with its length and whether the budget
        cut it off."""
        encoded = [encode_prompt(tokenizer, prompt, self.chat_template(tokenizer)) for prompt in prompts]
        pad_id, eos_id = padding_id(tokenizer), tokenizer.eos_token_id
        if self.batches_continuously and eos_id is not None:
            generated = greedy_decode(model, encoded, max_new_tokens=self.max_new_tokens, eos_token_ids=[eos_id],
                                      pad_token_id=pad_id, batch_size=self.batch_size)
        else:
            generated = generate_ids(model, encoded, pad_token_id=pad_id, eos_token_id=eos_id,
                                     batch_size=self.batch_size, max_new_tokens=self.max_new_tokens,
                                     num_beams=self.num_beams, length_penalty=self.length_penalty,
                                     no_repeat_ngram_size=self.no_repeat_ngram_size)
        return [Completion(tokenizer.decode(ids, skip_special_tokens=True).strip(), len(ids),
                           len(ids) == self.max_new_tokens and ids[-1] != eos_id) for ids in generated]

    def option_logliks(self, model: nn.Module, tokenizer, prompts: list[str], options: list[list[str]]
                       ) -> list[list[float]]:
        """``log p(option | prompt)`` for every option of every prompt."""
        return option_logliks(model, tokenizer, prompts, options, batch_size=self.batch_size,
                              use_chat_template=self.chat_template(tokenizer))


@dataclass
class PromptTargetPipeline:
    """Base of the causal-LM pipelines: ``(prompt, target)`` training pairs and the decoding settings."""

    train_pairs: list[tuple[str, str]]
    max_length: int
    decoding: Decoding
    model_task: ClassVar[ModelTask] = "causal_lm"
    num_labels: ClassVar[None] = None
    label_names: ClassVar[None] = None

    def train_features(self, tokenizer) -> list[dict[str, Any]]:
        chat = self.decoding.chat_template(tokenizer)
        return [encode_prompt_target(tokenizer, prompt, target, self.max_length, chat)
                for prompt, target in self.train_pairs]

    def data_collator(self, tokenizer) -> CausalLMCollator:
        return CausalLMCollator(padding_id(tokenizer))

    def evaluation_switches(self) -> dict[str, str]:
        return {"greedy_decoder": "continuous batching"} if self.decoding.batches_continuously else {}
