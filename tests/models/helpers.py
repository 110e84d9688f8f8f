"""Tiny models saved with a word-level tokenizer, and installed packages hidden or located, for the model tests."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerFast

WORDS = ["hello", "world", "good", "bad", "movie", "plot", "acting"]


def save_tiny_tokenizer(directory: Path, pad: bool = True, eos: bool = True) -> None:
    """A whitespace word-level tokenizer over WORDS, optionally without pad and/or eos tokens."""
    specials = {"unk_token": "<unk>", "bos_token": "<s>"} | ({"eos_token": "</s>"} if eos else {}) | (
        {"pad_token": "<pad>"} if pad else {})
    vocab = {token: i for i, token in enumerate([*specials.values(), *WORDS])}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, **specials).save_pretrained(directory)


def save_tiny_model(directory: Path, model, **tokenizer_options) -> Path:
    model.save_pretrained(directory)
    save_tiny_tokenizer(directory, **tokenizer_options)
    return directory


def hide_packages(monkeypatch, *names: str) -> None:
    """Make importlib.util.find_spec report the given top-level packages as not installed."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name in names else real_find_spec(name, *args))


def requires(package: str):
    return pytest.mark.skipif(importlib.util.find_spec(package) is None, reason=f"{package} is not installed")


def installed_file(distribution: str, suffix: str) -> Path:
    """The one file of an installed distribution whose path ends with ``suffix``, from its RECORD."""
    dist = importlib.metadata.distribution(distribution)
    (match,) = [f for f in dist.files if str(f).endswith(suffix)]
    return Path(dist.locate_file(match)).resolve()
