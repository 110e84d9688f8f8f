"""Print the lower bounds pyproject.toml declares as exact pins, ``name==floor``, one a line.

``python .ci/floors.py [EXTRA ...]``: the floors of the core dependencies, then those of the named extras. A
requirement without a lower bound (``>=``, ``~=`` or ``==``) prints nothing. `.ci/run`'s floors job installs what
this prints, so the versions it tests are the declared ones and cannot drift from them.

torch is left out: its floor is the CPU build both jobs install from local disk (`torch==2.13.0`), and no other
release can be installed here without gigabytes of CUDA libraries.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
NOT_PINNED = {"torch"}
LOWER_BOUNDS = (">=", "~=", "==")


def floors(extras: list[str]) -> list[str]:
    """``name[extras]==floor`` for each requirement of the core dependencies and of ``extras`` with a lower bound."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    unknown = sorted(set(extras) - set(project["optional-dependencies"]))
    if unknown:
        raise SystemExit(f"floors.py: no extra {', '.join(unknown)} in {PYPROJECT}")
    requirements = [*project["dependencies"], *(r for extra in extras for r in project["optional-dependencies"][extra])]
    pins = []
    for text in requirements:
        requirement = Requirement(text)
        bounds = [spec.version for spec in requirement.specifier if spec.operator in LOWER_BOUNDS]
        if requirement.name in NOT_PINNED or not bounds:
            continue
        if len(bounds) > 1:
            raise SystemExit(f"floors.py: {text!r} in {PYPROJECT} has more than one lower bound")
        extras_text = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
        pins.append(f"{requirement.name}{extras_text}=={bounds[0]}")
    return pins


if __name__ == "__main__":
    print("\n".join(floors(sys.argv[1:])))
