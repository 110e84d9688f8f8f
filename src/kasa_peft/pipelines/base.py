"""What every task pipeline provides to the runner, and the small helpers they share."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import torch
from torch import nn

from ..core.files import write_text_atomically as write_atomically  # the pipelines' atomic text writer

ModelTask = Literal["sequence_classification", "causal_lm"]
Metrics = dict[str, Any]
T = TypeVar("T")

# Subsets (--max-train-samples, --max-eval-samples) are drawn with this seed, not the run's --seed, so every
# method and seed of a comparison sees the same examples.
SUBSET_SEED = 0


class TaskPipeline(Protocol):
    """A task's data (loaded and checked on construction), its encoding, and its evaluation.

    ``main_metric`` names the key of ``evaluate``'s result that picks the best evaluation (higher is better).
    """

    @property
    def model_task(self) -> ModelTask: ...

    @property
    def num_labels(self) -> int | None: ...

    @property
    def label_names(self) -> list[str] | None: ...

    @property
    def main_metric(self) -> str: ...

    def train_features(self, tokenizer) -> list[dict[str, Any]]:
        """The encoded training examples, ready for ``data_collator``."""

    def data_collator(self, tokenizer) -> Callable[[list[dict[str, Any]]], dict]:
        """Turns a list of ``train_features`` into a padded batch of tensors."""

    def evaluate(self, model: nn.Module, tokenizer, output_dir: Path | None) -> Metrics:
        """Metrics on the evaluation data; prediction files go to ``output_dir`` when it is given."""

    def evaluation_summary(self) -> str:
        """What one evaluation covers, for people (e.g. ``"252 meaning representations, beam search ..."``)."""

    def evaluation_switches(self) -> dict[str, str]:
        """How the evaluation computes its numbers where no `RunConfig` setting says it (e.g. which option scorer),
        recorded with each run: runs that differ here are not comparable number for number."""


def best_device() -> torch.device:
    """Where evaluation and inference run: the GPU when there is one (training goes where the Trainer puts it)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fixed_subset(items: Sequence[T], limit: int | None) -> list[T]:
    """At most ``limit`` items, a random subset fixed by ``SUBSET_SEED``, kept in their original order."""
    if limit is None or limit >= len(items):
        return list(items)
    chosen = sorted(random.Random(SUBSET_SEED).sample(range(len(items)), limit))
    return [items[i] for i in chosen]


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    write_atomically(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


def format_value(value: Any) -> str:
    """A metric for people: floats to 4 decimals, anything else (``None``, a reason) as it is."""
    return f"{value:.4f}" if isinstance(value, float) else str(value)
