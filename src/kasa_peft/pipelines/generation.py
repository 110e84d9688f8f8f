"""What the causal-LM task pipelines (E2E, commonsense, SFT) share: prompt/target training data and decoding.

Training examples are ``prompt + target + EOS`` with the loss on the target only
(:func:`~kasa_peft.pipelines.causal_lm.encode_prompt_target`); evaluation generates from the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from .causal_lm import CausalLMCollator, Conversation, encode_prompt_target, generate_texts, option_logliks, padding_id
from .config import RunConfig


@dataclass(frozen=True)
class Decoding:
    """How evaluation decodes; ``use_chat_template=None`` means "when the tokenizer has one"."""

    batch_size: int
    max_new_tokens: int
    num_beams: int
    length_penalty: float
    no_repeat_ngram_size: int
    use_chat_template: bool | None

    @classmethod
    def from_config(cls, config: RunConfig) -> "Decoding":
        return cls(config.eval_batch_size or config.batch_size, config.max_new_tokens, config.num_beams,
                   config.length_penalty, config.no_repeat_ngram_size, config.use_chat_template)

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
        return generate_texts(model, tokenizer, prompts, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens,
                              num_beams=self.num_beams, length_penalty=self.length_penalty,
                              no_repeat_ngram_size=self.no_repeat_ngram_size,
                              use_chat_template=self.chat_template(tokenizer))

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
    model_task = "causal_lm"
    num_labels = None
    label_names = None

    def train_features(self, tokenizer) -> list[dict[str, Any]]:
        chat = self.decoding.chat_template(tokenizer)
        return [encode_prompt_target(tokenizer, prompt, target, self.max_length, chat)
                for prompt, target in self.train_pairs]

    def data_collator(self, tokenizer) -> CausalLMCollator:
        return CausalLMCollator(padding_id(tokenizer))
