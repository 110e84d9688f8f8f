"""The cache of converted models: one folder an entry, built in a staging folder and published whole.

An entry is built beside its final place, gets its completion marker (``CACHE_MARKER``, listing every file with
its size) last, and is moved into place with one ``os.replace``; only an entry whose marker matches its files is
ever read, and a damaged one is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import transformers
from safetensors import SafetensorError, safe_open

from ..core.files import reporting_full_disk

CACHE_MARKER = "kasa-peft-cache.json"


def gguf_cache_dir(gguf_path: str | os.PathLike) -> Path:
    """The cache folder for a GGUF file's dequantized copy.

    ``<root>/<file stem>-<hash>``, the hash covering the file's size and modification time and the transformers
    version (so a changed file or a different converter gets a fresh entry). ``<root>`` is ``$KASA_PEFT_CACHE``,
    else ``$XDG_CACHE_HOME/kasa-peft/models`` (``~/.cache/kasa-peft/models``).
    """
    stat = Path(gguf_path).stat()
    key = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}:{transformers.__version__}".encode()).hexdigest()[:16]
    return cache_root() / f"{Path(gguf_path).stem}-{key}"


def cache_root() -> Path:
    """``$KASA_PEFT_CACHE``, else ``$XDG_CACHE_HOME/kasa-peft/models`` (``~/.cache/kasa-peft/models``)."""
    if "KASA_PEFT_CACHE" in os.environ:
        return Path(os.environ["KASA_PEFT_CACHE"]).expanduser()
    xdg_cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser()
    return xdg_cache / "kasa-peft" / "models"


def ensure_cached(entry: Path, build: Callable[[Path], None], metadata: dict) -> Path:
    """Return ``entry``, building it first with ``build(staging_dir)`` unless a complete copy exists.

    The staging folder sits next to ``entry`` and gets the completion marker last, then is moved into place
    with ``os.replace``. A folder at ``entry`` without the marker (left by an interrupted or foreign writer) is
    never read: it is deleted and rebuilt. If the build fails, nothing is left behind.
    """
    if is_complete(entry):
        return entry
    if (entry / CACHE_MARKER).is_file():
        warnings.warn(f"the cached conversion {entry} is damaged (a file is missing, cut off or changed since it was "
                      "written); rebuilding it", stacklevel=3)
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".partial", dir=entry.parent))
    try:
        with reporting_full_disk(staging, shown_as=entry):
            build(staging)
            files = {str(p.relative_to(staging)): p.stat().st_size for p in sorted(staging.rglob("*")) if p.is_file()}
            (staging / CACHE_MARKER).write_text(json.dumps({**metadata, "files": files}, indent=2))
        publish(staging, entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # already gone when published
    return entry


def is_complete(entry: Path) -> bool:
    """Whether ``entry`` holds a whole conversion: its marker lists every file with its size, they all have that
    size, and each safetensors file's header reads (a truncated or damaged entry is rebuilt, never loaded)."""
    try:
        marker = json.loads((entry / CACHE_MARKER).read_text())
        files = marker["files"]
        if not isinstance(files, dict) or not files:
            return False
        for name, size in files.items():
            path = entry / name
            if not path.resolve().is_relative_to(entry.resolve()) or not path.is_file() or path.stat().st_size != size:
                return False
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt"):
                    pass
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError):
        return False
    return True


def publish(staging: Path, entry: Path) -> None:
    """Move a finished staging folder to ``entry``, replacing an incomplete one; a concurrent winner is kept."""
    if entry.exists() and not is_complete(entry):
        shutil.rmtree(entry)
    try:
        os.replace(staging, entry)
    except OSError:
        if not is_complete(entry):  # not another process having published the same entry first
            raise
