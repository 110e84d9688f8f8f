"""Instruction following scored by IFEval: supervised fine-tuning as ``sft``, evaluation on the 541 IFEval prompts.

Training is ``sft``'s (``--train-file``, or the T0 subset under ``--data-dir``). Evaluation generates one greedy
response per IFEval prompt (through the chat template when the tokenizer has one) and scores it with
lm-evaluation-harness's checks (:mod:`kasa_peft.tasks.ifeval`): prompt- and instruction-level accuracy, strict
and loose, plus both per instruction kind. Prompts, responses and per-instruction verdicts go to
``ifeval_generations.jsonl``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..tasks.ifeval import IFEvalPrompt, load_ifeval, score_ifeval
from .base import Metrics, fixed_subset, write_jsonl
from .config import RunConfig
from .generation import Decoding, PromptTargetPipeline
from .sft import sft_train_pairs

GENERATIONS_FILE = "ifeval_generations.jsonl"


@dataclass
class IFEvalPipeline(PromptTargetPipeline):
    prompts: list[IFEvalPrompt]
    main_metric = "prompt_level_strict_acc"

    def evaluation_summary(self) -> str:
        return f"{len(self.prompts)} IFEval prompts, {self.decoding}"

    def evaluate(self, model: nn.Module, tokenizer, output_dir: Path | None) -> Metrics:
        responses = self.decoding.generate(model, tokenizer, [p.prompt for p in self.prompts])
        metrics, rows = score_ifeval(self.prompts, responses)
        if output_dir is not None:
            write_jsonl(output_dir / GENERATIONS_FILE, rows)
        return metrics


def ifeval_pipeline(config: RunConfig) -> IFEvalPipeline:
    return IFEvalPipeline(fixed_subset(sft_train_pairs(config), config.max_train_samples), config.max_length,
                          Decoding.from_config(config), fixed_subset(load_ifeval(config.data_dir),
                                                                     config.max_eval_samples))
