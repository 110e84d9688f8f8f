"""One training process per run directory: an exclusive ``flock`` on ``.<dir>.lock`` beside it.

The kernel releases a ``flock`` when its process ends, even by ``kill -9``, so a lock is never stale; the file
records the holder's pid and command line for the error a second process gets.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class RunDirectoryBusy(OSError):
    """Another process is training into the same output directory."""


def lock_path(output_dir: Path) -> Path:
    return output_dir.parent / f".{output_dir.name}.lock"


@contextmanager
def run_directory_lock(output_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock for the block; raise `RunDirectoryBusy` naming the holder if it is taken."""
    path = lock_path(output_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = _acquire(path, output_dir)
    try:
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}: {' '.join(sys.argv)}\n")
        handle.flush()
        yield
    finally:
        path.unlink(missing_ok=True)  # while still locked, so no other process holds a lock on this file
        handle.close()


def _acquire(path: Path, output_dir: Path):
    """Lock ``path``; retry when the file was replaced between opening and locking (a holder just left)."""
    while True:
        handle = path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunDirectoryBusy(f"{output_dir} is in use by a running `kasa-peft train` ({holder}); wait for it "
                                   "to finish, or choose another --output-dir") from None
        if path.exists() and os.path.samestat(os.fstat(handle.fileno()), path.stat()):
            return handle
        handle.close()
