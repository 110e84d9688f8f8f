import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # for tests/tiny_models.py

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real benchmark data (``KASA_PEFT_DATA_DIR`` or ``<repo>/../shared/data``); skips when absent."""
    path = Path(os.environ.get("KASA_PEFT_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set KASA_PEFT_DATA_DIR)")
    return path


@pytest.fixture
def cache_root(tmp_path, monkeypatch) -> Path:
    """An empty model cache (``KASA_PEFT_CACHE``) for the test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("KASA_PEFT_CACHE", str(root))
    return root


@pytest.fixture
def gguf_file(tmp_path) -> Path:
    """A file named like a GGUF model (its content is not one)."""
    path = tmp_path / "tiny.Q4_0.gguf"
    path.write_bytes(b"GGUF not really")
    return path
