"""Instruction following scored by IFEval: supervised fine-tuning as ``sft``, evaluation on the 541 IFEval prompts.

Training is ``sft``'s (``--train-file``, or the T0 subset under ``--data-dir``). Evaluation generates one greedy
response per IFEval prompt (through the chat template when the tokenizer has one) and scores it with
lm-evaluation-harness's checks (:mod:`kasa_peft.tasks.ifeval`): prompt- and instruction-level accuracy, strict
and loose, plus both per instruction kind. Greedy decoding uses continuous batching (a response that has stopped
leaves the batch; :mod:`~kasa_peft.pipelines.continuous_batching`). A response cut off at ``--max-new-tokens``
fails most length and ending instructions whatever the model, so ``budget_hits`` counts them. Prompts,
responses, their lengths in tokens and per-instruction verdicts go to ``ifeval_generations.jsonl``.

ROUGE-L, the older instruction-following metric, is the secondary one: with ``--eval-file`` or
``--instruct-eval-sets``, the run is also scored as ``sft`` scores it on those held-out sets (``<set>/rouge_l``,
``<set>/exact_match``), decoded with ``sft``'s budget of new tokens (or the run's, when smaller).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..tasks.ifeval import IFEvalPrompt, load_ifeval, score_ifeval
from .base import Metrics, fixed_subset, write_jsonl
from .config import TASK_DEFAULTS, RunConfig, required
from .generation import Decoding, PromptTargetPipeline
from .sft import HeldOutSets, held_out_sets, sft_train_pairs

GENERATIONS_FILE = "ifeval_generations.jsonl"


@dataclass
class IFEvalPipeline(PromptTargetPipeline):
    prompts: list[IFEvalPrompt]
    held_out: HeldOutSets | None = None
    main_metric = "prompt_level_strict_acc"

    def evaluation_summary(self) -> str:
        summary = f"{len(self.prompts)} IFEval prompts, {self.decoding}"
        return summary if self.held_out is None else f"{summary}; ROUGE-L on {self.held_out}"

    def evaluate(self, model: nn.Module, tokenizer, output_dir: Path | None) -> Metrics:
        completions = self.decoding.complete(model, tokenizer, [p.prompt for p in self.prompts])
        metrics, rows = score_ifeval(self.prompts, [c.text for c in completions])
        metrics["budget_hits"] = sum(c.hit_budget for c in completions)
        if output_dir is not None:
            write_jsonl(output_dir / GENERATIONS_FILE, [{**row, "new_tokens": c.new_tokens, "hit_budget": c.hit_budget}
                                                         for row, c in zip(rows, completions, strict=True)])
        if self.held_out is not None:
            metrics |= self.held_out.evaluate(model, tokenizer, output_dir)
        return metrics


def ifeval_pipeline(config: RunConfig) -> IFEvalPipeline:
    held_out = None
    if config.eval_file or config.instruct_eval_sets:
        budget = min(required(config.max_new_tokens, "max_new_tokens"), TASK_DEFAULTS["sft"]["max_new_tokens"])
        held_out = held_out_sets(config.replace(max_new_tokens=budget), continuous=True)
    return IFEvalPipeline(fixed_subset(sft_train_pairs(config), config.max_train_samples),
                          required(config.max_length, "max_length"),
                          Decoding.from_config(config, continuous=True),
                          fixed_subset(load_ifeval(config.data_dir), config.max_eval_samples), held_out)
