"""Files that appear whole or not at all, and the cleanup of what a killed writer left behind.

A file is written inside a temporary sibling directory ``.<name>.<pid>.<random>.tmp``, flushed to disk,
then renamed over ``<name>`` (``os.replace`` is atomic on POSIX): a reader, or a process killed at any
instant, sees the old file or the new one. The writer's process id in the temporary's name lets a later
writer remove the temporaries of writers that no longer run (``remove_stale``) without touching those of a
live one.

Files get the permissions the user's umask gives: ``tempfile`` creates files 0600 and directories 0700, and
safetensors writes its files 0600, so a file written through them and renamed into place would be private,
whatever the umask says. Everything the library writes goes through :func:`default_permissions` before it is
moved into place.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

STALE_SUFFIX = ".tmp"
LEGACY_STAGING = ".tmp-"  # how kasa-peft 0.1's staging directories were named: .<name>.tmp-<random>


def temporary_prefix(name: str) -> str:
    """The prefix of this process's temporaries for ``name``: ``.<name>.<pid>.``."""
    return f".{name}.{os.getpid()}."


def write_file_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(temporary)``, flush the result to disk, and rename it to ``path``.

    ``temporary`` lies in a private staging directory ``.<name>.<pid>.<random>.tmp``, so whatever the writer
    creates next to its file (safetensors >= 0.8 writes through its own ``.tmpXXXXXX`` sibling) is removed with
    it, here on error and by `remove_stale` after a kill. On any error ``path`` is unchanged.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, path.name)
    staging = Path(tempfile.mkdtemp(prefix=temporary_prefix(path.name), suffix=STALE_SUFFIX, dir=path.parent))
    temporary = staging / path.name
    try:
        with reporting_full_disk(temporary, shown_as=path):
            write(temporary)
            default_permissions(temporary)
            _fsync(temporary)
        os.replace(temporary, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _fsync(path.parent)


# What writers say when the disk is full or a file-size limit (ulimit -f) is hit: Python and safetensors give the
# errno (ENOSPC, EFBIG, EDQUOT); torch.save's C++ stream only says that writing failed.
FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
FULL_DISK_WORDS = ("No space left", "File too large", "Disk quota exceeded", "os error 28", "os error 27",
                   "iostream error", "unexpected pos", "file write failed")


def is_full_disk(err: BaseException) -> bool:
    """Whether ``err`` is a writer's way of saying the disk is full or a file grew past the size limit."""
    if isinstance(err, OSError) and err.errno in FULL_DISK_ERRNOS:
        return True
    return isinstance(err, (OSError, RuntimeError, SafetensorError)) and any(w in str(err) for w in FULL_DISK_WORDS)


@contextlib.contextmanager
def reporting_full_disk(target: str | os.PathLike[str],
                        shown_as: str | os.PathLike[str] | None = None) -> Iterator[None]:
    """Within the block a file (or a directory's files) is written to ``target``; a full disk or a file-size limit
    becomes one ``OSError`` naming it (``shown_as``: the name it will have, ``target`` being a temporary) and saying
    what to do. (Which file of a directory failed is not always known: safetensors writes through a temporary of
    its own and removes it.)"""
    try:
        yield
    except Exception as err:
        if not is_full_disk(err):
            raise
        written = Path(shown_as if shown_as is not None else target)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OSError(f"no space left on the device / file too large while writing {written} ({reason}): free "
                      "disk space (or raise the file-size limit, ulimit -f) and run again") from None


def check_tensor_file(path: str | os.PathLike[str], fix: str,
                      allowed: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext) -> None:
    """Raise ``ValueError`` naming ``path`` unless ``torch.load(..., weights_only=True)`` reads it (within
    ``allowed()``, a context that may allow more globals): a pickle that would run code is never run, and a file
    that is not plain tensors is named here, not deep inside a loader."""
    import pickle

    import torch

    try:
        with allowed():
            torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(Path(path)))
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} is not a file of tensors that loads safely ({reason}); it is damaged, or holds "
                         f"Python objects that are never loaded: {fix}") from None


def _is_zip(path: Path) -> bool:
    """Whether ``path`` is in torch.save's zip format (which can be memory-mapped instead of read)."""
    with path.open("rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def read_json_object(path: str | os.PathLike[str], fix: str) -> dict[str, Any]:
    """The JSON object in ``path``, a file we did not just write: an unreadable, cut-off or non-object file is a
    ``ValueError`` naming it and saying what to do (``fix``)."""
    path = Path(path)
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is damaged or cut off ({err}): {fix}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} is damaged: it holds a JSON {type(value).__name__}, not an object: {fix}")
    return value


def current_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def default_permissions(path: str | os.PathLike[str]) -> None:
    """Give ``path`` (for a directory: it and everything in it) the mode ``open`` / ``mkdir`` would have given:
    0o666 for files and 0o777 for directories, less the umask."""
    path = Path(path)
    mask = current_umask()
    for item in (path, *path.rglob("*")) if path.is_dir() else (path,):
        item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (`write_file_atomically`)."""
    write_file_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def remove_stale(directory: Path, name: str) -> list[Path]:
    """Remove the temporaries for ``name`` in ``directory`` whose writer process no longer runs, and the
    ``.<name>.tmp-*`` staging directories of kasa-peft versions that did not record it; returns them."""
    if not directory.is_dir():
        return []
    removed = []
    for entry in directory.glob(f".{name}.*"):
        pid = _writer_pid(entry.name, name)
        legacy = entry.name.startswith(f".{name}{LEGACY_STAGING}")
        if not legacy and (pid is None or pid == os.getpid() or _is_running(pid)):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _writer_pid(entry: str, name: str) -> int | None:
    """The pid in ``.<name>.<pid>.<random>.tmp`` (mkstemp's random part has no dot), else ``None``."""
    match = re.fullmatch(rf"\.{re.escape(name)}\.(\d+)\.[a-z0-9_]+{re.escape(STALE_SUFFIX)}", entry)
    return int(match[1]) if match else None


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file or a directory) to disk, so a rename never outlives the data it points to."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
