"""Fixtures: tiny random models on disk, and the CLI."""

from __future__ import annotations

import pytest

from tiny_models import tiny_bert, tiny_gpt2, tiny_llama

from .helpers import run_cli, save_model


@pytest.fixture
def cli(capsys):
    return lambda *args: run_cli(capsys, *args)


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory) -> str:
    """A tiny random BERT encoder without a head, like a pretrained checkpoint: runs add their task's head."""
    return save_model(tmp_path_factory.mktemp("bert"), tiny_bert().bert)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> str:
    return save_model(tmp_path_factory.mktemp("llama"), tiny_llama())


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory) -> str:
    return save_model(tmp_path_factory.mktemp("gpt2"), tiny_gpt2())
