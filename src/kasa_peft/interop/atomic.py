"""Output directories that appear whole or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..core.files import STALE_SUFFIX, default_permissions, remove_stale, reporting_full_disk, temporary_prefix


@contextmanager
def atomic_directory(out: str | os.PathLike) -> Iterator[Path]:
    """A staging directory next to ``out`` that is renamed to ``out`` when the block succeeds.

    ``out`` must not exist or be an empty directory (so a failed or partial export can never be mistaken
    for a good one, and no stale file of an earlier export survives). On any error nothing is left behind,
    and the staging directories of exports that were killed are removed (`remove_stale`).
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not an empty directory; choose a new output "
                              "directory or remove this one first")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out.parent, out.name)
    staging = Path(tempfile.mkdtemp(prefix=temporary_prefix(out.name), suffix=STALE_SUFFIX, dir=out.parent))
    try:
        with reporting_full_disk(staging, shown_as=out):
            yield staging
        default_permissions(staging)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def atomic_file(out: str | os.PathLike) -> Iterator[Path]:
    """A staging file path next to ``out``, renamed to ``out`` when the block succeeds.

    ``out`` must not exist (an earlier export is never overwritten). On any error nothing is left behind.
    """
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new output file or remove this one first")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex}"  # created by the writer, with the usual mode
    try:
        with reporting_full_disk(staging, shown_as=out):
            yield staging
        os.replace(staging, out)
    finally:
        staging.unlink(missing_ok=True)
