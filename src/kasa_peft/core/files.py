"""Files with the permissions the user's umask gives.

``tempfile`` creates files 0600 and directories 0700, and safetensors writes its files 0600: a file written
through them and renamed into place would be private, whatever the umask says. Everything the library
writes goes through :func:`default_permissions` before it is moved into place.
"""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def default_permissions(path: str | os.PathLike) -> None:
    """Give ``path`` (for a directory: it and everything in it) the mode ``open`` / ``mkdir`` would have given:
    0o666 for files and 0o777 for directories, less the umask."""
    path = Path(path)
    mask = current_umask()
    for item in (path, *path.rglob("*")) if path.is_dir() else (path,):
        item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)
