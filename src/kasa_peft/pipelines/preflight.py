"""The pre-flight check of ``kasa-peft inspect --model``: what KaSA's truncation does before any training.

`kasa_peft.analysis.truncation_report` gives, per targeted weight, the number ``d`` of dropped components and the
share of ``||W||_F`` they carry. With a task, `preflight` also measures the language-model (or classification)
loss of the untrained KaSA model on the first ``samples`` training examples, next to the base model's: the
adapter starts with ``B = 0``, so the untrained model is the base minus the dropped components, and the two
losses are computed on one model, with the adapter on and off (``disable_adapters``).
"""

from __future__ import annotations

import warnings
from typing import Any, cast

import torch
from torch import nn

from ..core import KasaConfig, disable_adapters
from ..core.config import ALL_LINEAR, DropRank
from ..analysis.truncation_report import TruncationReport, read_truncation, truncation_report
from ..models import load_model, natural_task
from .causal_lm import IGNORE_INDEX
from .config import normalise_settings, parse_drop_rank, resolve_config
from .run import RunStart, start
from .targets import default_target_modules

DEFAULT_SAMPLES = 32


@torch.no_grad()
def mean_loss(begun: RunStart, model: nn.Module | None = None, batch_size: int = 8) -> float:
    """Mean loss of ``model`` (default ``begun.prepared.model``) on the run's training features, weighted by what
    each example predicts: its target tokens for a causal LM (the prompt is masked), one label for a classifier."""
    model = (model or begun.prepared.model).eval()
    collate = begun.pipeline.data_collator(begun.tokenizer)
    total, count = 0.0, 0
    for first in range(0, len(begun.features), batch_size):
        batch = collate([begun.features[i] for i in range(first, min(first + batch_size, len(begun.features)))])
        labels = batch["labels"]
        # causal LMs predict token t + 1 from tokens up to t
        counted = int((labels[:, 1:] != IGNORE_INDEX).sum()) if labels.dim() > 1 else labels.shape[0]
        total += model(**batch).loss.item() * counted
        count += counted
    return total / count


def truncation_losses(begun: RunStart) -> tuple[float, float]:
    """``(base loss, untrained KaSA loss)`` of a KaSA run's start (`mean_loss`, adapter off and on)."""
    model = begun.prepared.model
    truncated = mean_loss(begun, model)
    with disable_adapters(model):
        base = mean_loss(begun, model)
    return base, truncated


def preflight(settings: dict[str, Any], samples: int = DEFAULT_SAMPLES, spectra: bool = False) -> TruncationReport:
    """The truncation report for ``settings`` (`RunConfig` fields: ``model``, and ``r``, ``drop_rank``,
    ``drop_budget``, ``target_modules``, ``quantize`` as a run would take them; on a quantized base the weights
    are the dequantized ones its layers compute with).

    With a ``task`` (and its data: ``data_dir`` / ``train_file``), the run's own start is built on ``samples``
    training examples and the report carries the two losses (`truncation_losses`); without one, only the
    model is loaded (a causal LM when its checkpoint is one, else the encoder with a classification head).
    """
    if settings.get("task"):
        config = resolve_config({}, {**settings, "method": "kasa", "max_train_samples": samples})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the large-truncation warning: the report shows it all
            begun = start(config)
        report = read_truncation(begun.prepared.model, spectra=spectra)
        return report.with_losses(*truncation_losses(begun), examples=len(begun.features))
    given = normalise_settings(settings, "the command line")
    drop_rank = cast(DropRank, parse_drop_rank(given.get("drop_rank", "r")))  # KasaConfig checks it
    kasa = KasaConfig(r=given.get("r", KasaConfig.r), drop_rank=drop_rank,
                      drop_budget=given.get("drop_budget"))  # the settings are checked before the model loads
    model, _ = load_model(given["model"], natural_task(given["model"]), quantize=given.get("quantize"))
    targets = given.get("target_modules") or default_target_modules(model, family="")
    kasa = kasa.replace(target_modules=ALL_LINEAR if targets == [ALL_LINEAR] else tuple(targets))
    return truncation_report(model, kasa, spectra=spectra)
