"""Instruction following: supervised fine-tuning on prompt/response pairs, held-out ROUGE-L and exact match.

Training data is ``--train-file`` (Alpaca ``instruction``/``input``/``output`` or ``prompt``/``completion``
records) or, by default, the T0 subset under ``--data-dir``; the loss is on the response only and prompts go
through the tokenizer's chat template when it has one. Evaluation generates a response for each held-out
prompt (``--eval-file``, or the Self-Instruct sets named by ``--instruct-eval-sets``: ``user_oriented``,
``seed``) and reports Super-NaturalInstructions' ROUGE-L and exact match (0-100) per set. The prompts,
references and generations go to ``sft_generations.jsonl`` for people to read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..tasks.instruct import exact_match, load_instruct_eval, load_sft_file, load_t0_train, rouge_l
from .base import Metrics, fixed_subset, write_jsonl
from .config import RunConfig, required
from .generation import Decoding, PromptTargetPipeline

GENERATIONS_FILE = "sft_generations.jsonl"


@dataclass(frozen=True)
class HeldOutSets:
    """Held-out prompt/reference pairs by set name, scored by ROUGE-L and exact match of greedy generations."""

    sets: dict[str, list[tuple[str, str]]]
    decoding: Decoding

    def __str__(self) -> str:
        return f"{sum(len(pairs) for pairs in self.sets.values())} prompts, {self.decoding}"

    def evaluate(self, model: nn.Module, tokenizer, output_dir: Path | None) -> Metrics:
        """``<set>/rouge_l`` and ``<set>/exact_match`` per set; the generations go to ``sft_generations.jsonl``."""
        metrics: Metrics = {}
        records: list[dict[str, str]] = []
        for name, pairs in self.sets.items():
            prompts, references = [p for p, _ in pairs], [r for _, r in pairs]
            generations = self.decoding.generate(model, tokenizer, prompts)
            metrics[f"{name}/rouge_l"] = rouge_l(generations, references)
            metrics[f"{name}/exact_match"] = exact_match(generations, references)
            records.extend({"set": name, "prompt": p, "reference": r, "generation": g}
                           for p, r, g in zip(prompts, references, generations, strict=True))
        if output_dir is not None:
            write_jsonl(output_dir / GENERATIONS_FILE, records)
        return metrics


@dataclass
class SFTPipeline(PromptTargetPipeline):
    held_out: HeldOutSets

    @property
    def main_metric(self) -> str:
        return f"{next(iter(self.held_out.sets))}/rouge_l"

    def evaluation_summary(self) -> str:
        return str(self.held_out)

    def evaluate(self, model: nn.Module, tokenizer, output_dir: Path | None) -> Metrics:
        return self.held_out.evaluate(model, tokenizer, output_dir)


def sft_train_pairs(config: RunConfig) -> list[tuple[str, str]]:
    """The training pairs: ``--train-file``, else the T0 subset under ``--data-dir`` (or the hub's T0 set)."""
    return load_sft_file(config.train_file) if config.train_file else load_t0_train(config.data_dir)


def held_out_sets(config: RunConfig, continuous: bool = False) -> HeldOutSets:
    """``--eval-file``, else the Self-Instruct sets named by ``--instruct-eval-sets``, each cut to
    ``--max-eval-samples``, decoded as the config says (greedy with continuous batching if ``continuous``)."""
    if config.eval_file:
        sets = {"eval": load_sft_file(config.eval_file)}
    else:
        names = required(config.instruct_eval_sets, "instruct_eval_sets")
        sets = {name: load_instruct_eval(config.data_dir, name) for name in names}
    return HeldOutSets({name: fixed_subset(pairs, config.max_eval_samples) for name, pairs in sets.items()},
                       Decoding.from_config(config, continuous))


def sft_pipeline(config: RunConfig) -> SFTPipeline:
    return SFTPipeline(fixed_subset(sft_train_pairs(config), config.max_train_samples),
                       required(config.max_length, "max_length"), Decoding.from_config(config), held_out_sets(config))
