"""`.ci/floors.py`, which gives CI's floors job its pins: one per declared lower bound, each the bound itself."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("floors", ROOT / ".ci" / "floors.py")
floors = importlib.util.module_from_spec(spec)
spec.loader.exec_module(floors)


def test_every_declared_floor_is_pinned_exactly_and_torch_is_left_out():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {Requirement(text).name: Requirement(text).specifier
                for text in [*project["dependencies"], *project["optional-dependencies"]["baselines"],
                             *project["optional-dependencies"]["trl"]]}
    pins = dict(line.split("==") for line in floors.floors(["baselines", "trl"]))

    assert {"transformers", "accelerate", "datasets", "safetensors", "peft", "trl"} <= pins.keys()
    assert "torch" not in pins
    for name, version in pins.items():
        assert version in declared[name], (name, version)  # the pin satisfies the declaration ...
        assert any(s.operator in (">=", "==") and s.version == version for s in declared[name])  # ... as its bound
    unbounded = {name for name, specifier in declared.items() if not any(s.operator in (">=", "==") for s in specifier)}
    assert pins.keys() == declared.keys() - unbounded - {"torch"}
