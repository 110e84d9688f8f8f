"""`KasaConfig`: what to adapt and how, validated on construction."""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
import typing
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

Regularizer = Literal["paper", "reference"]
Reduction = Literal["mean", "sum"]
TruncationMethod = Literal["eigh", "svd"]
DropRank = int | Literal["r", "auto"]
SigmaInit = Literal["randn", "ones"]

ALL_LINEAR = "all-linear"
# Default share of ||W||_F that ``drop_rank="auto"`` may remove from a weight (README, "Spectrum-aware truncation").
DEFAULT_DROP_BUDGET = 0.005


@dataclass(frozen=True)
class KasaConfig:
    """Configuration of one KaSA adapter.

    Args:
        r: adapter rank (and, by default, the number of smallest singular components dropped from each weight).
        alpha: the update is scaled by ``alpha / r`` (or ``alpha / sqrt(r)`` with ``use_rslora``).
        dropout: dropout probability on the adapter's input (the truncation correction never sees dropout).
        target_modules: which layers to adapt. A list matches exact module names or name suffixes
            (``"query"`` matches ``encoder.layer.0.attention.self.query``); a single string other than
            ``"all-linear"`` is a regular expression matched against the full name; ``"all-linear"`` adapts
            every ``nn.Linear`` / ``Conv1D`` except the output head.
        exclude_modules: names, suffixes or a regex of layers never adapted.
        modules_to_save: modules trained fully and saved with the adapter (e.g. a classification head).
        beta: weight of the singular-value penalty ``sum(sigma^2)``.
        gamma: weight of the orthogonality penalty ``||B^T B - I||_F + ||A A^T - I||_F``.
        regularizer: ``"paper"`` (r x r Grams, the paper's equations) or ``"reference"`` (the authors'
            script: ``||A^T A - I_in||_F + ||B B^T - I_out||_F``; same minimiser, gradient damped by about
            ``1 / sqrt(in - r)``). Published beta/gamma values were tuned with ``"reference"``.
        reduction: ``"mean"`` over adapted layers (the reference script, what published beta/gamma assume)
            or ``"sum"`` (PEFT's ``_get_kasa_loss``).
        truncation: ``"eigh"`` (float64 eigendecomposition of the smaller Gram matrix, falling back to
            SVD when the spectral gap at the cut is too small) or ``"svd"`` (float64 full SVD).
        drop_rank: how many of the smallest singular components of each weight ``W`` (out x in) the truncation
            drops: ``"r"`` (the paper: ``d = r``), a fixed integer ``0 <= d < min(out, in)`` (``0``: KaSA's update
            and regularisers on the untouched base), or ``"auto"``: per layer the largest ``d <= r`` whose
            dropped components carry at most ``drop_budget`` of ``||W||_F`` (``sqrt(s_{k-d+1}^2 + ... + s_k^2)
            <= drop_budget * ||W||_F``), so flat-spectrum matrices keep their tail.
        drop_budget: the share of ``||W||_F`` that ``drop_rank="auto"`` may remove, in (0, 1); default
            ``DEFAULT_DROP_BUDGET``. Only with ``drop_rank="auto"``.
        use_rslora: scale by ``alpha / sqrt(r)`` instead of ``alpha / r``.
        learn_sigma: train the knowledge-aware singular values (KaSA). ``False`` fixes ``sigma = 1``: truncation
            followed by a plain LoRA update, the first step of the paper's ablation.
        sigma_init: where a learned ``sigma`` starts: ``"randn"`` (the paper's code, ``N(0, 1)``) or ``"ones"``
            (the first update then moves ``B`` exactly as LoRA's does; with ``d = 0`` the untrained adapter
            and its first gradient are LoRA's).
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | str = ("query", "value")
    exclude_modules: tuple[str, ...] | str = ()
    modules_to_save: tuple[str, ...] = ()
    beta: float = 1e-4
    gamma: float = 1e-3
    regularizer: Regularizer = "paper"
    reduction: Reduction = "mean"
    truncation: TruncationMethod = "eigh"
    use_rslora: bool = False
    learn_sigma: bool = True
    sigma_init: SigmaInit = "randn"
    drop_rank: DropRank = "r"
    drop_budget: float | None = None

    def __post_init__(self) -> None:
        for name in ("target_modules", "exclude_modules", "modules_to_save"):
            value = getattr(self, name)
            if name == "modules_to_save" and isinstance(value, str):
                value = (value,)  # one module name, not its characters
            _check(_is_names(value), f"{name} must be a string or a list of strings, got {value!r}")
            if not isinstance(value, str):
                object.__setattr__(self, name, tuple(value))
        _check(_is_integer(self.r) and self.r >= 1, f"r must be a positive integer, got {self.r!r}")
        _check(_is_number(self.alpha) and math.isfinite(self.alpha) and self.alpha > 0,
               f"alpha must be a positive number, got {self.alpha!r}")
        _check(_is_number(self.dropout) and 0.0 <= self.dropout < 1.0,
               f"dropout must be in [0, 1), got {self.dropout!r}")
        for name in ("beta", "gamma"):
            value = getattr(self, name)
            _check(_is_number(value) and math.isfinite(value) and value >= 0,
                   f"{name} must be a finite number >= 0 (it weights a penalty), got {value!r}")
        for name in ("use_rslora", "learn_sigma"):
            _check(isinstance(getattr(self, name), bool), f"{name} must be true or false, got {getattr(self, name)!r}")
        for name, plain in (("r", int), ("alpha", float), ("dropout", float), ("beta", float), ("gamma", float)):
            if type(getattr(self, name)) not in (int, float):  # e.g. numpy scalars, which JSON cannot write
                object.__setattr__(self, name, plain(getattr(self, name)))
        for name, kind in (("regularizer", Regularizer), ("reduction", Reduction), ("truncation", TruncationMethod),
                           ("sigma_init", SigmaInit)):
            choices, value = typing.get_args(kind), getattr(self, name)
            _check(value in choices, f"{name} must be one of {choices}, got {value!r}")
        self._check_drop()
        _check(bool(self.target_modules),
               "target_modules is empty: name the layers to adapt, e.g. ('query', 'value') or 'all-linear'")
        for name in ("target_modules", "exclude_modules"):
            pattern = getattr(self, name)
            if isinstance(pattern, str) and pattern != ALL_LINEAR:
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise ValueError(f"{name}={pattern!r} is not a valid regular expression: {err}") from None

    def _check_drop(self) -> None:
        rank = self.drop_rank
        _check(rank in ("r", "auto") or (_is_integer(rank) and rank >= 0),
               f"drop_rank must be 'r', 'auto' or an integer >= 0 (components dropped per weight), got {rank!r}")
        if self.drop_budget is not None:
            _check(rank == "auto", f"drop_budget={self.drop_budget!r} is used only with drop_rank='auto' "
                   f"(got drop_rank={rank!r}): set drop_rank='auto' or leave drop_budget out")
            _check(_is_number(self.drop_budget) and 0 < self.drop_budget < 1,
                   f"drop_budget must be a share of the weight norm in (0, 1), got {self.drop_budget!r}")

    def drop_target(self) -> tuple[int, float | None]:
        """``(count, budget)``: drop ``count`` components, or with a ``budget`` the most (at most ``count``) whose
        share of ``||W||_F`` stays within it."""
        if self.drop_rank == "auto":
            return self.r, DEFAULT_DROP_BUDGET if self.drop_budget is None else float(self.drop_budget)
        return (self.r if self.drop_rank == "r" else self.drop_rank), None

    @property
    def scale(self) -> float:
        """The factor in front of ``B diag(sigma) A``."""
        return self.alpha / math.sqrt(self.r) if self.use_rslora else self.alpha / self.r

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "KasaConfig":
        if not isinstance(data, dict):
            raise ValueError(f"invalid KasaConfig: expected a mapping of fields, got {data!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown KasaConfig fields {sorted(unknown)}; known fields: {sorted(known)}")
        return cls(**data)

    def replace(self, **changes: Any) -> "KasaConfig":
        return dataclasses.replace(self, **changes)


def _is_integer(value: object) -> TypeGuard[int]:
    """An integer that is not a ``bool`` (``True`` is an int in Python, never a rank)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[float]:
    """A real number that is not a ``bool``."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_names(value: object) -> bool:
    """A string, or a list / tuple of strings."""
    return isinstance(value, str) or (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value))


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"invalid KasaConfig: {message}")


def matches(name: str, patterns: tuple[str, ...] | str) -> bool:
    """Whether a module name matches a list of names/suffixes or a regular expression."""
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)
