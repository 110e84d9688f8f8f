"""``kasa-peft score``: any system's outputs, scored with a task's official metrics.

A predictions or references file holds one item per line: plain text, or a ``.jsonl`` file whose lines are
JSON strings or objects (the item is the first of the fields ``generation``, ``prediction``, ``output``,
``reference``, ``answer``, ``label`` it has: the files ``kasa-peft train`` writes read as they are).

* ``e2e``: one output line per distinct MR of the references CSV, in its order (the challenge's scorer);
  references default to ``<data-dir>/e2e/test.csv`` (without --data-dir: the hub's E2E test split);
* ``glue:<task>``: labels (GLUE class names or ids; scores for STS-B); references default to the dev set;
* ``classify``: labels, references required;
* ``commonsense:<set>``: generations, scored by answer extraction; references default to the set's test answers;
* ``sft``: responses, ROUGE-L and exact match; references default to the user-oriented Self-Instruct outputs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..tasks._common import read_lines, require_path
from ..tasks.commonsense import accuracy, extract_answer, load_commonsense
from ..tasks.e2e import load_e2e, score_e2e_files, score_e2e_predictions
from ..tasks.glue import get_glue_task, glue_metrics, label_ids, load_glue
from ..tasks.instruct import exact_match, load_instruct_eval, rouge_l
from .base import Metrics
from .classification import classification_scores
from .task_names import check_evaluation_modules, parse_task

ITEM_FIELDS = ("generation", "prediction", "output", "reference", "answer", "label")


def score(task: str, predictions: str | Path, references: str | Path | None = None,
          data_dir: str | Path | None = None) -> Metrics:
    """The task's metrics for the outputs in ``predictions`` (module docstring)."""
    name = parse_task(task)
    check_evaluation_modules(task)
    if name.family == "e2e":
        if references:
            return score_e2e_files(predictions, references)
        return score_e2e_predictions(predictions, load_e2e(data_dir, "test"), "the E2E test set")
    outputs = read_items(predictions)
    if name.family == "glue":
        spec = get_glue_task(name.required_member)
        golds = (read_items(references) if references
                 else load_glue(name.required_member, data_dir, spec.eval_splits[0]).labels)
        if spec.is_regression:
            return glue_metrics(name.required_member, _numbers(outputs, predictions), _numbers(golds, references))
        return glue_metrics(name.required_member, _label_ids(outputs, spec.label_names, predictions),
                            _label_ids(golds, spec.label_names, references))
    if name.family == "commonsense" and name.member != "all":
        golds = read_items(references) if references else [
            example["answer"] for example in load_commonsense(name.required_member, data_dir, "test")]
        answers = [extract_answer(name.required_member, text) for text in outputs]
        return {"generation_accuracy": accuracy(answers, golds)}
    if name.family == "sft":
        golds = read_items(references) if references else [ref for _, ref in load_instruct_eval(data_dir)]
        return {"rouge_l": rouge_l(outputs, golds), "exact_match": exact_match(outputs, golds)}
    if name.family == "classify" and references:
        golds = read_items(references)
        names = sorted(set(golds))
        return classification_scores(label_ids(outputs, names, predictions), label_ids(golds, names, references))
    raise ValueError(f"`kasa-peft score {task}` needs --references (a file with one gold item per line)"
                     if name.family == "classify" else
                     f"`kasa-peft score` cannot score {task!r}; score e2e, glue:<task>, classify, "
                     "commonsense:<set> or sft")


def read_items(path: str | Path) -> list[str]:
    """One item per line (see the module docstring); blank lines of a ``.jsonl`` file are skipped."""
    lines = read_lines(require_path(path, "check the file name"), "utf-8")
    if Path(path).suffix != ".jsonl":
        return [line.strip() for line in lines]
    items = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                items.append(_item(json.loads(line)))
            except (json.JSONDecodeError, KeyError) as err:
                raise ValueError(f"{path}, line {number}: expected a JSON string or an object with one of the "
                                 f"fields {', '.join(ITEM_FIELDS)} ({err})") from None
    return items


def _item(value) -> str:
    if isinstance(value, dict):
        field = next((f for f in ITEM_FIELDS if f in value), None)
        if field is None:
            raise KeyError(f"fields {sorted(value)}")
        value = value[field]
    return str(value)


def _label_ids(items: Sequence, label_names: Sequence[str], source) -> list[int]:
    """Class names (or ids written as numbers) as label ids."""
    if all(isinstance(item, int) for item in items):
        return list(items)
    names = [label_names[int(item)] if str(item).isdigit() and int(item) < len(label_names) else str(item)
             for item in items]
    return label_ids(names, label_names, source)


def _numbers(items: Sequence, source) -> list[float]:
    try:
        return [float(item) for item in items]
    except ValueError as err:
        raise ValueError(f"{source}: expected one number per line ({err})") from None
