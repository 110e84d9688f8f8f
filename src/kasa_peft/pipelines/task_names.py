"""Task names on the command line: ``glue:cola``, ``classify``, ``e2e``, ``commonsense:boolq``, ``sft``, ...

A task name is a family, optionally followed by ``:`` and a member of that family.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from typing import NamedTuple

FAMILIES = ("glue", "classify", "sentiment", "e2e", "commonsense", "sft", "ifeval")


@cache
def _members() -> dict[str, tuple[str, ...]]:
    """The members of the families that have them (imported on first use: the GLUE module loads scipy)."""
    from ..tasks.commonsense import COMMONSENSE_SETS
    from ..tasks.glue import GLUE_TASKS

    return {"glue": tuple(GLUE_TASKS), "commonsense": (*COMMONSENSE_SETS, "all")}


class TaskName(NamedTuple):
    family: str
    member: str | None

    def __str__(self) -> str:
        return self.family if self.member is None else f"{self.family}:{self.member}"

    @property
    def required_member(self) -> str:
        """The member of a family that has members (``glue``, ``commonsense``: ``parse_task`` requires one)."""
        assert self.member is not None, f"task family {self.family!r} has no member"
        return self.member


def task_choices() -> list[str]:
    """Every valid task name, for help texts and errors."""
    members = _members()
    return [f"{family}:{member}" if family in members else family
            for family in FAMILIES for member in members.get(family, (None,))]


def parse_task(name: str) -> TaskName:
    """Split and check a task name; an unknown one raises ``ValueError`` listing the valid names."""
    family, separator, member = name.partition(":")
    members = _members()
    if family in members:
        valid = member in members[family]
    else:
        valid = family in FAMILIES and not separator
    if not valid:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(task_choices())}")
    return TaskName(family, member or None)


# what each task family's evaluation imports from an optional extra (pyproject.toml): checked before a run loads
# its model, so that a missing package never surfaces after hours of training
EVALUATION_MODULES = {"e2e": ("sacrebleu", "pycocoevalcap"), "sft": ("rouge_score",), "ifeval": ("lm_eval",)}


def check_evaluation_modules(task: str) -> None:
    """Raise ``ModuleNotFoundError`` (naming the module) when ``task``'s evaluation needs one that is missing."""
    family = parse_task(task).family
    for module in EVALUATION_MODULES.get(family, ()):
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(f"No module named {module!r}, which scoring {family} needs", name=module)
