"""No benchmark script is named like an installed package: benchmarks/ is on ``sys.path`` when a script runs (and
some scripts put it first), where a ``trl.py`` would be imported in place of TRL itself."""

import importlib.metadata
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_no_script_shadows_an_installed_package():
    installed = set(importlib.metadata.packages_distributions()) | set(sys.stdlib_module_names)
    scripts = {path.stem for path in [*BENCHMARKS.glob("*.py"), *BENCHMARKS.glob("*/")] if path.name != "results"}
    assert "trl" in installed and "common" not in installed  # what the check reads knows the packages it guards
    assert not scripts & installed, f"rename the benchmark scripts {sorted(scripts & installed)}"
