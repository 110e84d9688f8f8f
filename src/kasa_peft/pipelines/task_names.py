"""Task names on the command line: ``glue:cola``, ``classify``, ``e2e``, ``commonsense:boolq``, ``sft``, ...

A task name is a family, optionally followed by ``:`` and a member of that family.
"""

from __future__ import annotations

from typing import NamedTuple

from ..tasks.commonsense import COMMONSENSE_SETS
from ..tasks.glue import GLUE_TASKS

FAMILIES = ("glue", "classify", "sentiment", "e2e", "commonsense", "sft")
_MEMBERS = {"glue": tuple(GLUE_TASKS), "commonsense": (*COMMONSENSE_SETS, "all")}
CLASSIFICATION_FAMILIES = ("glue", "classify", "sentiment")


class TaskName(NamedTuple):
    family: str
    member: str | None

    @property
    def is_classification(self) -> bool:
        return self.family in CLASSIFICATION_FAMILIES

    def __str__(self) -> str:
        return self.family if self.member is None else f"{self.family}:{self.member}"


def task_choices() -> list[str]:
    """Every valid task name, for help texts and errors."""
    return [f"{family}:{member}" if family in _MEMBERS else family
            for family in FAMILIES for member in _MEMBERS.get(family, (None,))]


def parse_task(name: str) -> TaskName:
    """Split and check a task name; an unknown one raises ``ValueError`` listing the valid names."""
    family, separator, member = name.partition(":")
    if family in _MEMBERS:
        valid = member in _MEMBERS[family]
    else:
        valid = family in FAMILIES and not separator
    if not valid:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(task_choices())}")
    return TaskName(family, member or None)
