"""The benchmark scripts' modules (``common``, ``quality.*``) importable by the tests here.

Appended, not prepended, to ``sys.path``: a benchmark named like an installed package must never shadow it.
"""

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[2] / "benchmarks"))
