"""Which code produced a result: the git commit of the source checkout the package runs from."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

UNKNOWN = "unknown"
PACKAGE = Path(__file__).resolve().parents[1]  # kasa_peft/


def source_revision(package: Path = PACKAGE) -> dict[str, str | bool]:
    """``{"commit": <40 hex digits>, "dirty": <bool>}`` of the git checkout ``package`` is tracked in, recorded with
    every run and benchmark result; ``"unknown"`` for both where it is not one (an installed wheel, no ``git``).

    ``dirty`` is whether a tracked file differs from the commit (staged or not), as ``git describe --dirty`` says;
    untracked files do not count. The checkout is only read: git is told to take no optional locks, so a concurrent
    git command in the same checkout is not disturbed.
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True, check=True,
                              timeout=30, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"}).stdout

    try:
        git("ls-files", "--error-unmatch", "__init__.py")  # the package is this checkout's, not a bystander's
        commit = git("rev-parse", "--verify", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):  # no git, not a checkout, not tracked, no commit yet, a hang
        return {"commit": UNKNOWN, "dirty": UNKNOWN}
    return {"commit": commit, "dirty": dirty}
