"""Metric helpers shared by the task families."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def check_lengths(predictions: Sequence[Any], references: Sequence[Any]) -> None:
    """Raise ``ValueError`` unless there is one prediction per reference, and at least one."""
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")


def accuracy(predictions: Sequence[Any], golds: Sequence[Any]) -> float:
    """Fraction of predictions equal to their gold answer (0–1)."""
    check_lengths(predictions, golds)
    return sum(p == g for p, g in zip(predictions, golds, strict=True)) / len(golds)
