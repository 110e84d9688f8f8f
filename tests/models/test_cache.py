"""kasa_peft.models.cache: where an entry lives, and that it is built once, published whole, or not at all."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kasa_peft.models import cache
from kasa_peft.models.cache import gguf_cache_dir


def test_cache_dir_is_keyed_by_file_stamp(gguf_file, cache_root):
    entry = gguf_cache_dir(gguf_file)
    assert entry.parent == cache_root and entry.name.startswith("tiny.Q4_0-")
    assert gguf_cache_dir(gguf_file) == entry
    stat = gguf_file.stat()
    os.utime(gguf_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert gguf_cache_dir(gguf_file) != entry


def test_cache_root_defaults_to_xdg_cache_home(gguf_file, tmp_path, monkeypatch):
    monkeypatch.delenv("KASA_PEFT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gguf_cache_dir(gguf_file).parent == tmp_path / "xdg" / "kasa-peft" / "models"


def write_file(name: str, calls: list):
    """A cache builder that records its calls and writes one file."""
    def build(staging: Path) -> None:
        calls.append(staging)
        (staging / name).write_text(name)
    return build


def test_cache_entry_is_built_once(cache_root):
    calls = []
    entry = cache_root / "model-abc"
    assert cache.ensure_cached(entry, write_file("weights", calls), {}) == entry
    assert cache.ensure_cached(entry, write_file("other", calls), {}) == entry
    assert len(calls) == 1 and (entry / "weights").read_text() == "weights"
    assert [p.name for p in cache_root.iterdir()] == ["model-abc"]  # no staging folders left


def test_partial_cache_entry_is_rebuilt(cache_root):
    entry = cache_root / "model-abc"
    entry.mkdir(parents=True)
    (entry / "config.json").write_text('{"trunc')  # an interrupted write: no completion marker
    calls = []
    cache.ensure_cached(entry, write_file("weights", calls), {})
    assert len(calls) == 1 and sorted(p.name for p in entry.iterdir()) == [cache.CACHE_MARKER, "weights"]


def test_failed_build_leaves_nothing_behind(cache_root):
    def failing_build(staging: Path) -> None:
        (staging / "half").write_text("half")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError, match="conversion failed"):
        cache.ensure_cached(cache_root / "model-abc", failing_build, {})
    assert list(cache_root.iterdir()) == []
