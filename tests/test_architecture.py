"""The package's rooms form layers, and no module imports from a room above its own.

core and tasks (data) at the bottom; analysis, models and training on the core; interop on those; the task
pipelines and the integrations with other trainers on everything below; the command line on top. Each room's
docstring says what it holds.
"""

import ast
import importlib
from pathlib import Path

import pytest

import kasa_peft

PACKAGE = Path(kasa_peft.__file__).parent
LEVELS = {
    "lazy": 0, "providers": 0, "version": 0, "core": 0, "tasks": 0,
    "analysis": 1, "models": 1, "training": 1,
    "interop": 2,
    "pipelines": 3, "integrations": 3,
    "cli": 4, "__init__": 4, "__main__": 4,
}


def room_of(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def imported_modules(path: Path) -> list[str]:
    """Every kasa_peft module ``path`` imports, absolute or relative, at any depth of the file."""
    module = ".".join(("kasa_peft", *path.relative_to(PACKAGE).with_suffix("").parts))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                found.append(f"{base}.{node.module}" if node.module else base)
            elif node.module and node.module.startswith("kasa_peft"):
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("kasa_peft")]
    return [name.removeprefix("kasa_peft.").removeprefix("kasa_peft") or "__init__" for name in found]


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_from_a_room_above_its_own(path):
    own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    assert own in LEVELS, f"{own} is a new room: give it a level in LEVELS"
    upward = [name for name in imported_modules(path)
              if name != "__init__" and LEVELS[name.split(".")[0]] > LEVELS[own]]
    assert not upward, f"{path.relative_to(PACKAGE)} imports from a higher room: {upward}"


def test_imports_are_resolved_to_real_modules():
    """The checker above reads real module names (a mistake in its relative-import arithmetic would pass all)."""
    names = imported_modules(PACKAGE / "interop" / "gguf" / "adapter.py")
    assert "analysis.factors" in names and "interop.base_model" in names
    for name in names:
        importlib.util.find_spec(f"kasa_peft.{name}".rsplit(".", 1)[0])


@pytest.mark.parametrize("room", sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py")))
def test_every_room_says_what_it_holds(room):
    assert importlib.import_module(f"kasa_peft.{room}").__doc__, f"kasa_peft.{room} has no docstring"
