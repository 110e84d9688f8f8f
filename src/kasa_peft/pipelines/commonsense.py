"""Commonsense reasoning in the LLM-Adapters format: train on the available training sets, test per set.

As in LLM-Adapters (and the paper), one model is trained on the union of the commonsense training data
(here every ``commonsense/<set>/train.json`` that exists, or ``--train-file``) and tested on each set.
Accuracy is measured two ways, both reported:

* ``<set>/generation_accuracy``: greedy generation, then the first answer keyword in the text
  (LLM-Adapters' ``extract_answer``) must equal the gold answer;
* ``<set>/option_accuracy``: the option ``o`` maximising ``log p("the correct answer is o" | prompt)``
  must be the gold one (more reliable for small models, which often generate no keyword at all).

With several test sets, ``average/...`` is the unweighted mean over sets (the paper's "Avg." column).
Every answer goes to ``commonsense_predictions.jsonl``.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import fmean
from pathlib import Path
from typing import Any

from torch import nn

from ..tasks.commonsense import (
    COMMONSENSE_SETS, accuracy, answer_options, answer_target, available_train_sets, extract_answer, format_prompt,
    load_commonsense,
)
from ..tasks.instruct import load_sft_file
from .base import Metrics, fixed_subset, write_jsonl
from .causal_lm import OPTION_SCORER, choose_option
from .config import RunConfig, required
from .generation import Decoding, PromptTargetPipeline

PREDICTIONS_FILE = "commonsense_predictions.jsonl"
MODES = ("generation_accuracy", "option_accuracy")


@dataclass
class CommonsensePipeline(PromptTargetPipeline):
    test_sets: dict[str, list[dict[str, Any]]]

    @property
    def main_metric(self) -> str:
        return f"{'average' if len(self.test_sets) > 1 else next(iter(self.test_sets))}/option_accuracy"

    def evaluation_summary(self) -> str:
        return f"{sum(len(examples) for examples in self.test_sets.values())} questions, {self.decoding}"

    def evaluation_switches(self) -> dict[str, str]:
        return {"option_scorer": OPTION_SCORER}

    def evaluate(self, model: nn.Module, tokenizer, output_dir: Path | None) -> Metrics:
        metrics: Metrics = {}
        records: list[dict[str, Any]] = []
        for name, examples in self.test_sets.items():
            scores, answers = self._evaluate_set(model, tokenizer, name, examples)
            metrics.update({f"{name}/{mode}": value for mode, value in scores.items()})
            records.extend(answers)
        if len(self.test_sets) > 1:
            metrics.update({f"average/{mode}": fmean(metrics[f"{name}/{mode}"] for name in self.test_sets)
                            for mode in MODES})
        if output_dir is not None:
            write_jsonl(output_dir / PREDICTIONS_FILE, records)
        return metrics

    def _evaluate_set(self, model: nn.Module, tokenizer, name: str, examples: list[dict[str, Any]]
                      ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        prompts = [format_prompt(example) for example in examples]
        golds = [example["answer"] for example in examples]
        generations = self.decoding.generate(model, tokenizer, prompts)
        extracted = [extract_answer(name, text) for text in generations]
        options = [answer_options(name, example) for example in examples]
        targets = [[answer_target(option) for option in row] for row in options]
        logliks = self.decoding.option_logliks(model, tokenizer, prompts, targets)
        chosen = [row[i] for row, i in zip(options, choose_option(logliks), strict=True)]
        scores = {"generation_accuracy": accuracy(extracted, golds), "option_accuracy": accuracy(chosen, golds)}
        answers = [{"set": name, "answer": gold, "generation": text, "extracted": found, "option_choice": choice}
                   for gold, text, found, choice in zip(golds, generations, extracted, chosen, strict=True)]
        return scores, answers


def training_pairs(config: RunConfig) -> list[tuple[str, str]]:
    """``--train-file`` (LLM-Adapters/Alpaca records), else every available ``commonsense/<set>/train.json``
    (without ``--data-dir``: all eight sets' LLM-Adapters ``train.json``)."""
    if config.train_file:
        return load_sft_file(config.train_file)
    sets = available_train_sets(config.data_dir)
    if not sets:
        raise FileNotFoundError(f"no commonsense/<set>/train.json under {config.data_dir}: pass --data-dir with "
                                "commonsense training data, or --train-file with LLM-Adapters records")
    return [(format_prompt(record), record["output"])
            for name in sets for record in load_commonsense(name, config.data_dir, "train")]


def commonsense_pipeline(config: RunConfig, member: str) -> CommonsensePipeline:
    """``member`` is one set of ``COMMONSENSE_SETS`` or ``"all"``; ``--max-eval-samples`` applies per set."""
    names = COMMONSENSE_SETS if member == "all" else (member,)
    test_sets = {name: fixed_subset(load_commonsense(name, config.data_dir, "test"), config.max_eval_samples)
                 for name in names}
    return CommonsensePipeline(fixed_subset(training_pairs(config), config.max_train_samples),
                               required(config.max_length, "max_length"),
                               Decoding.from_config(config), test_sets)
