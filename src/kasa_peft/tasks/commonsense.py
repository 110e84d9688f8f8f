"""Commonsense-reasoning sets in LLM-Adapters' format (``instruction``, ``input``, ``output``, ``answer``).

Files live at ``<data_dir>/commonsense/<name>/{train,test}.json``; without a data directory
they are read from the LLM-Adapters repository (``hub.LLM_ADAPTERS_JSON``). The training target
is ``example["output"]`` (``"the correct answer is <answer>"``) after ``format_prompt``.
Scoring follows LLM-Adapters' ``commonsense_evaluate.py``: the first answer keyword
found in the generation (``extract_answer``) must equal ``example["answer"]``.
"""

from __future__ import annotations

import re
from typing import Any

from ._common import PathLike, check_choice, data_path, read_json_records, require_text_fields
from .hub import LLM_ADAPTERS_JSON, HubSource, hub_records
from .instruct import format_instruction
from .metrics import accuracy

__all__ = [
    "ANSWER_PREFIX", "COMMONSENSE_SETS", "accuracy", "answer_options", "answer_target", "available_train_sets",
    "extract_answer", "format_prompt", "gold_option", "load_commonsense",
]

COMMONSENSE_SETS = ("boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Easy", "ARC-Challenge",
                    "openbookqa")
ANSWER_PREFIX = "the correct answer is "

_ANSWER_N = tuple(f"answer{i}" for i in range(1, 6))
# The alternatives of LLM-Adapters' extract_answer regexes, in their order.
_KEYWORDS: dict[str, tuple[str, ...]] = {
    "boolq": ("true", "false"),
    "piqa": ("solution1", "solution2"),
    "social_i_qa": _ANSWER_N,
    "ARC-Challenge": _ANSWER_N,
    "ARC-Easy": _ANSWER_N,
    "openbookqa": _ANSWER_N,
    "hellaswag": ("ending1", "ending2", "ending3", "ending4"),
    "winogrande": ("option1", "option2"),
}
_ANSWER_FORMAT = re.compile(r"Answer format: (\S+)\s*$")


def load_commonsense(name: str, data_dir: PathLike | None, split: str = "test") -> list[dict[str, Any]]:
    """The records of ``commonsense/<name>/<split>.json`` (``split`` is ``"train"`` or ``"test"``), read from
    LLM-Adapters' copy of that file without ``data_dir``."""
    check_choice(name, COMMONSENSE_SETS, "commonsense set")
    check_choice(split, ("train", "test"), "commonsense split")
    if data_dir is None:
        source = HubSource("json", data_files=LLM_ADAPTERS_JSON.format(name=name, split=split))
        return _checked(hub_records(source, "train"), source)
    path = data_path(data_dir, f"commonsense/{name}/{split}.json")
    return _checked(read_json_records(path), path)


def _checked(records: list[dict[str, Any]], source: object) -> list[dict[str, Any]]:
    for number, record in enumerate(records, start=1):
        missing = {"instruction", "output", "answer"} - set(record)
        if missing:
            raise ValueError(f"{source}, record {number}: missing field(s) {', '.join(sorted(missing))}")
        require_text_fields(record, ("instruction", "output", "answer"), f"{source}, record {number}",
                            optional=("input",))
    return records


def available_train_sets(data_dir: PathLike | None) -> list[str]:
    """The commonsense sets whose ``train.json`` exists under ``data_dir``, in ``COMMONSENSE_SETS`` order;
    all of them without ``data_dir`` (LLM-Adapters has a ``train.json`` for each)."""
    if data_dir is None:
        return list(COMMONSENSE_SETS)
    root = data_path(data_dir, "commonsense")
    return [name for name in COMMONSENSE_SETS if (root / name / "train.json").is_file()]


def format_prompt(example: dict[str, Any]) -> str:
    """LLM-Adapters' ``generate_prompt`` (the Alpaca template) for one record.

    LLM-Adapters writes the template as an indented triple-quoted string, which puts
    source indentation into its prompts; this is the template without that artefact.
    """
    return format_instruction(example["instruction"], example.get("input") or "")


def extract_answer(name: str, text: str) -> str | None:
    """The first answer keyword of set ``name`` in ``text`` (case-sensitive, as LLM-Adapters).

    Like ``re.findall(r'answer1|answer2|...', text.strip())[0]``; ``None`` where the
    original returns ``""`` (no keyword found), which never equals a gold answer.
    """
    check_choice(name, COMMONSENSE_SETS, "commonsense set")
    match = re.search("|".join(_KEYWORDS[name]), text.strip())
    return match.group(0) if match else None


def answer_options(name: str, example: dict[str, Any]) -> list[str]:
    """The candidate answers of one example, for option log-likelihood scoring.

    Read from the instruction's closing ``Answer format: a/b/...`` line, so ARC items
    get their own 3–5 options. Score each option as the continuation
    ``answer_target(option)`` of ``format_prompt(example)``, matching the training target.
    """
    check_choice(name, COMMONSENSE_SETS, "commonsense set")
    found = _ANSWER_FORMAT.search(example["instruction"])
    if found is None:
        raise ValueError(f"{name}: the instruction does not end with an 'Answer format: ...' line")
    options = found.group(1).split("/")
    unknown = [option for option in options if option not in _KEYWORDS[name]]
    if unknown:
        raise ValueError(f"{name}: unexpected answer option(s) {unknown}; expected some of {list(_KEYWORDS[name])}")
    return options


def gold_option(name: str, example: dict[str, Any]) -> int:
    """Index of ``example["answer"]`` in ``answer_options(name, example)``."""
    options = answer_options(name, example)
    if example["answer"] not in options:
        raise ValueError(f"{name}: gold answer {example['answer']!r} is not among the options {options}")
    return options.index(example["answer"])


def answer_target(option: str) -> str:
    """The training-target text for an option, as in the data's ``output`` field."""
    return ANSWER_PREFIX + option
