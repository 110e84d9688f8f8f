"""Evaluating during training, and choosing the best and final evaluation.

Evaluations are stored in the Trainer's ``state.log_history`` (under :data:`EVALUATION_KEY`), so they are
saved with every checkpoint and a resumed run keeps the evaluations made before the interruption.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

from torch import nn
from tqdm.auto import tqdm
from transformers import TrainerCallback

from ..training.trainer import LOGGED_TERMS
from .base import Metrics, format_value

EVALUATION_KEY = "kasa_peft_evaluation"
Evaluation = dict[str, Any]  # {"step": int, "epoch": float, "metrics": {...}}


class PeriodicEvaluation(TrainerCallback):
    """Runs ``evaluate(model)`` every ``every_steps`` optimizer steps and/or at the end of every epoch."""

    def __init__(self, evaluate: Callable[[nn.Module], Metrics], every_steps: int | None, every_epoch: bool,
                 main_metric: str) -> None:
        self.evaluate, self.main_metric = evaluate, main_metric
        self.every_steps, self.every_epoch = every_steps, every_epoch

    def on_step_end(self, args, state, control, model=None, **kwargs) -> None:
        if self.every_steps and state.global_step % self.every_steps == 0:
            self.run(state, model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs) -> None:
        if self.every_epoch:
            self.run(state, model)

    def run(self, state, model: nn.Module) -> Evaluation:
        """Evaluate now (once per step) and record it in ``state.log_history``."""
        previous = evaluations(state.log_history)
        if previous and previous[-1]["step"] == state.global_step:
            return previous[-1]
        entry = {"step": state.global_step, "epoch": state.epoch, "metrics": self.evaluate(model)}
        state.log_history.append({EVALUATION_KEY: entry, "step": state.global_step})
        tqdm.write(f"step {state.global_step}: {self.main_metric} = {format_value(entry['metrics'][self.main_metric])}",
                   file=sys.stderr)
        return entry


def evaluations(log_history: list[dict[str, Any]]) -> list[Evaluation]:
    return [record[EVALUATION_KEY] for record in log_history if EVALUATION_KEY in record]


def training_losses(log_history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """The learning curve: per logging step, ``step`` and the logged ``loss`` (and, for KaSA, its ``task_loss``,
    ``reg_l2`` and ``reg_l3``)."""
    keys = ("loss", *LOGGED_TERMS)
    return [{"step": record["step"], **{key: record[key] for key in keys if key in record}}
            for record in log_history if "loss" in record]


def best_evaluation(history: list[Evaluation], main_metric: str) -> Evaluation:
    """The evaluation with the highest ``main_metric`` (the earliest on ties; a missing or NaN value never wins)."""
    def key(entry: Evaluation) -> float:
        value = entry["metrics"].get(main_metric)
        return value if isinstance(value, (int, float)) and not math.isnan(value) else -math.inf
    return max(history, key=key)
