"""The version is written in one place, ``src/kasa_peft/version.py``: pyproject reads it, the changelog names it."""

import importlib.metadata
import re
from pathlib import Path

import pytest

import kasa_peft

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_reads_the_version_from_the_package():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "kasa_peft.version.__version__"}


def test_installed_metadata_and_changelog_carry_the_package_version():
    assert importlib.metadata.version("kasa-peft") == kasa_peft.__version__, "reinstall: pip install -e ."
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert releases[0] == kasa_peft.__version__
