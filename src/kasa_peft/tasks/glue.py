"""GLUE data loading (GLUE download-script TSV layout, or the hub) and the official GLUE metrics.

Files are read from ``<data_dir>/glue/<TASK>/<split>.tsv`` exactly as the GLUE
download script lays them out (CoLA without a header row, MRPC with a UTF-8 BOM,
all of them without CSV quoting). Label ids follow GLUE's label order, e.g. RTE and
QNLI map ``entailment``/``not_entailment`` to 0/1. Without a data directory the split
comes from the hub's ``nyu-mll/glue``, whose ``label`` column already holds these ids.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ._common import (
    PathLike, check_choice, csv_records, data_path, read_csv, read_json_records, read_text, require_columns,
    require_records, require_unique_columns,
)
from .hub import GLUE, HubSource, hub_records, hub_split
from .metrics import accuracy, check_lengths

_BINARY = ("0", "1")


@dataclass(frozen=True)
class GlueTask:
    """How one GLUE task is stored and scored."""

    name: str
    dir_name: str
    text_fields: tuple[str, ...]
    label_field: str
    label_names: tuple[str, ...]  # GLUE's class names in label-id order; empty for regression
    file_labels: tuple[str, ...]  # how each class is written in the TSV, same order
    main_metric: str
    eval_splits: tuple[str, ...] = ("dev",)
    columns: tuple[str, ...] | None = None  # column names of a file without a header row
    hub_columns: tuple[str, ...] | None = None  # the hub's text columns, where they differ from text_fields

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.label_names)

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", *self.eval_splits)

    @property
    def hub_text_fields(self) -> tuple[str, ...]:
        return self.hub_columns or self.text_fields


GLUE_TASKS: dict[str, GlueTask] = {
    task.name: task
    for task in (
        GlueTask("cola", "CoLA", ("sentence",), "label", ("unacceptable", "acceptable"), _BINARY,
                 "matthews_correlation", columns=("source", "label", "original_label", "sentence")),
        GlueTask("sst2", "SST-2", ("sentence",), "label", ("negative", "positive"), _BINARY, "accuracy"),
        GlueTask("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("not_equivalent", "equivalent"),
                 _BINARY, "accuracy", hub_columns=("sentence1", "sentence2")),
        GlueTask("rte", "RTE", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"),
                 ("entailment", "not_entailment"), "accuracy"),
        GlueTask("stsb", "STS-B", ("sentence1", "sentence2"), "score", (), (), "pearson"),
        GlueTask("qnli", "QNLI", ("question", "sentence"), "label", ("entailment", "not_entailment"),
                 ("entailment", "not_entailment"), "accuracy"),
        GlueTask("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label",
                 ("entailment", "neutral", "contradiction"), ("entailment", "neutral", "contradiction"),
                 "accuracy", eval_splits=("dev_matched", "dev_mismatched"), hub_columns=("premise", "hypothesis")),
        GlueTask("qqp", "QQP", ("question1", "question2"), "is_duplicate", ("not_duplicate", "duplicate"),
                 _BINARY, "accuracy"),
    )
}


@dataclass
class ClassificationExamples:
    """Sentence(-pair) examples: ``texts_b`` is ``None`` for single-sentence data."""

    texts_a: list[str]
    texts_b: list[str] | None
    labels: list[int] | list[float]
    label_names: list[str] | None = None  # class names in label-id order; None for regression

    def __len__(self) -> int:
        return len(self.labels)


def get_glue_task(task: str) -> GlueTask:
    """The ``GlueTask`` named ``task`` (e.g. ``"cola"``), with a clear error for unknown names."""
    check_choice(task, GLUE_TASKS, "GLUE task")
    return GLUE_TASKS[task]


def load_glue(task: str, data_dir: PathLike | None, split: str) -> ClassificationExamples:
    """Load ``glue/<TASK>/<split>.tsv``, or the split from the hub without ``data_dir``; labels are GLUE
    label ids (floats for STS-B)."""
    spec = get_glue_task(task)
    check_choice(split, spec.splits, f"split for GLUE task {task!r}")
    rows, text_fields, labels = _file_split(spec, data_dir, split) if data_dir is not None else _hub_split(spec, split)
    return _examples(rows, text_fields, labels, list(spec.label_names) or None)


def _file_split(spec: GlueTask, data_dir: PathLike, split: str) -> tuple[list[dict], tuple[str, ...], list]:
    path = data_path(data_dir, f"glue/{spec.dir_name}/{split}.tsv")
    header, rows = _read_glue_tsv(path, spec.columns)
    require_columns(header, (*spec.text_fields, spec.label_field), path)
    raw_labels = [row[spec.label_field] for row in rows]
    labels = scores(raw_labels, path) if spec.is_regression else label_ids(raw_labels, spec.file_labels, path)
    return rows, spec.text_fields, labels


def scores(raw_labels: Sequence[str | float], source: PathLike) -> list[float]:
    """Regression targets as finite floats; anything else is an error naming the row."""
    values = []
    for number, value in enumerate(raw_labels, start=1):
        try:
            score = float(value)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise ValueError(f"{source}, record {number}: score {value!r} is not a finite number")
        values.append(score)
    return values


def _hub_split(spec: GlueTask, split: str) -> tuple[list[dict], tuple[str, ...], list]:
    rows = hub_records(HubSource(GLUE, spec.name), hub_split(split))
    raw_labels = [row["label"] for row in rows]
    labels = scores(raw_labels, f"{GLUE}/{spec.name} ({split})") if spec.is_regression else list(map(int, raw_labels))
    return rows, spec.hub_text_fields, labels


def _read_glue_tsv(path: Path, columns: tuple[str, ...] | None) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows as dicts) of a GLUE TSV; GLUE text contains stray quotes, so no CSV quoting."""
    rows = [fields for _, fields in csv_records(read_text(path), path, delimiter="\t", quoting=csv.QUOTE_NONE)]
    header, body = (list(columns), rows) if columns else (rows[0] if rows else [], rows[1:])
    require_unique_columns(header, path)
    require_records(body, path)
    for number, row in enumerate(body, start=1):
        if len(row) != len(header):
            raise ValueError(f"{path}, row {number}: expected {len(header)} tab-separated fields, found {len(row)}")
    return header, [dict(zip(header, row, strict=True)) for row in body]


def label_ids(raw_labels: Sequence[str], label_names: Sequence[str], source: PathLike) -> list[int]:
    """Map each label string to its index in ``label_names``; unknown labels are an error."""
    index = {name: i for i, name in enumerate(label_names)}
    for number, value in enumerate(raw_labels, start=1):
        if value not in index:
            raise ValueError(
                f"{source}, record {number}: label {value!r} is not one of {', '.join(map(repr, label_names))}"
            )
    return [index[value] for value in raw_labels]


def _examples(rows: Sequence[dict], text_fields: Sequence[str], labels: list, label_names: list[str] | None
              ) -> ClassificationExamples:
    texts = [[str(row[field]) for row in rows] for field in text_fields]
    return ClassificationExamples(texts[0], texts[1] if len(texts) == 2 else None, labels, label_names)


def load_classification_file(path: PathLike, text_columns: list[str], label_column: str,
                             label_names: list[str] | None = None) -> ClassificationExamples:
    """Load user data from ``.csv``, ``.tsv`` (header row, standard quoting) or ``.jsonl``.

    ``text_columns`` names one column (single sentence) or two (sentence pair). Labels
    are mapped to ids by their position in ``label_names``; when it is not given, the
    sorted distinct labels of this file are used (numerically when all are integers),
    so pass the training file's ``label_names`` when loading its dev/test files. Blank lines are skipped; an
    empty text or label cell, a file without examples and (without ``label_names``) a single class are errors.
    """
    if len(text_columns) not in (1, 2):
        raise ValueError(f"text_columns must name 1 or 2 columns, got {len(text_columns)}")
    columns, rows = _read_table(path)
    require_columns(columns, (*text_columns, label_column), path)
    _require_filled(rows, (*text_columns, label_column), path)
    raw_labels = [str(row[label_column]) for row in rows]
    names = list(label_names) if label_names is not None else _sorted_labels(raw_labels)
    if len(names) < 2:
        raise ValueError(f"{path}: column {label_column!r} holds one class only ({names[0]!r}); classification needs "
                         "examples of at least two classes")
    return _examples(rows, text_columns, label_ids(raw_labels, names, path), names)


def _require_filled(rows: Sequence[dict], fields: Sequence[str], path: PathLike) -> None:
    """Every row needs a non-blank value in each of ``fields`` (an empty label would become a class '')."""
    for number, row in enumerate(rows, start=1):
        empty = [field for field in fields if row[field] is None or not str(row[field]).strip()]
        if empty:
            raise ValueError(f"{path}, record {number}: {', '.join(map(repr, empty))} is empty; fill it in or "
                             "remove the row")


def _read_table(path: PathLike) -> tuple[list[str], list[dict]]:
    suffix = Path(path).suffix.lower()
    if suffix in (".csv", ".tsv"):
        return read_csv(path, delimiter="," if suffix == ".csv" else "\t")
    if suffix == ".jsonl":
        records = read_json_records(path)
        columns = list(dict.fromkeys(key for record in records for key in record))
        for number, record in enumerate(records, start=1):
            require_columns(list(record), columns, f"{path}, record {number}")
        return columns, records
    raise ValueError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv or .jsonl")


def _sorted_labels(raw_labels: Sequence[str]) -> list[str]:
    distinct = set(raw_labels)
    if all(value.lstrip("-").isdigit() for value in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def glue_metrics(task: str, predictions: Sequence[int | float], labels: Sequence[int | float]
                 ) -> dict[str, float]:
    """GLUE's official metrics for ``task`` (fractions, not percentages).

    CoLA: ``matthews_correlation``; SST-2/QNLI/RTE/MNLI: ``accuracy``; MRPC/QQP:
    ``accuracy``, ``f1`` (positive class 1) and their mean ``combined``; STS-B:
    ``pearson`` and ``spearman``. For MNLI score each of its eval splits separately.
    """
    from scipy.stats import pearsonr, spearmanr  # here: the task list is read when any command checks its --task
    from sklearn.metrics import f1_score, matthews_corrcoef

    spec = get_glue_task(task)
    check_lengths(predictions, labels)
    if spec.is_regression:
        return {"pearson": float(pearsonr(predictions, labels)[0]),
                "spearman": float(spearmanr(predictions, labels)[0])}
    if spec.main_metric == "matthews_correlation":
        return {"matthews_correlation": float(matthews_corrcoef(labels, predictions))}
    scores = {"accuracy": accuracy(predictions, labels)}
    if task in ("mrpc", "qqp"):
        scores["f1"] = float(f1_score(labels, predictions))
        scores["combined"] = (scores["accuracy"] + scores["f1"]) / 2
    return scores
