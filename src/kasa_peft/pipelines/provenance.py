"""Which code produced a result: the git commit of the source checkout the package runs from, as it was when the
process loaded it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

UNKNOWN = "unknown"
PACKAGE = Path(__file__).resolve().parents[1]  # kasa_peft/
RESULTS = "benchmarks/results"  # what the benchmarks write, in the checkout: output, not code


Revision = dict[str, str | bool]


def checkout_revision(package: Path = PACKAGE) -> Revision:
    """``{"commit": <40 hex digits>, "dirty": <bool>}`` of the git checkout ``package`` is tracked in, now;
    ``"unknown"`` for both where it is not one (an installed wheel, no ``git``).

    ``dirty`` is whether a tracked file differs from the commit (staged or not), as ``git describe --dirty`` says,
    except the benchmarks' records under ``benchmarks/results/`` (a table that runs again rewrites its own records,
    which changes no code); untracked files do not count. The checkout is only read: git is told to take no
    optional locks, so a concurrent git command in the same checkout is not disturbed.
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True, check=True,
                              timeout=30, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"}).stdout

    try:
        git("ls-files", "--error-unmatch", "__init__.py")  # the package is this checkout's, not a bystander's
        commit = git("rev-parse", "--verify", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                         f":(top,exclude){RESULTS}").strip())
    except (OSError, subprocess.SubprocessError):  # no git, not a checkout, not tracked, no commit yet, a hang
        return {"commit": UNKNOWN, "dirty": UNKNOWN}
    return {"commit": commit, "dirty": dirty}


LOADED = checkout_revision()  # the checkout as this process loaded it (this module loads with the pipelines)


def source_revision() -> Revision:
    """The revision of the code this process runs, recorded with every run and benchmark result: the checkout as
    the process loaded it (``LOADED``), marked dirty if the checkout has changed since. A record written at the end
    of a long run thus never names a commit made while it ran, and a module imported late may be newer code."""
    if LOADED["commit"] == UNKNOWN or checkout_revision(PACKAGE) == LOADED:
        return LOADED
    return {**LOADED, "dirty": True}
