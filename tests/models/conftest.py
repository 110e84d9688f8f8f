from types import SimpleNamespace

import pytest
from tiny_models import tiny_bert, tiny_llama

from .helpers import save_tiny_model


@pytest.fixture
def bert(tmp_path):
    model = tiny_bert(num_labels=2)
    return SimpleNamespace(model=model, dir=save_tiny_model(tmp_path / "bert", model))


@pytest.fixture
def llama(tmp_path):
    model = tiny_llama()
    return SimpleNamespace(model=model, dir=save_tiny_model(tmp_path / "llama", model, pad=False))
