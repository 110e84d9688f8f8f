"""``kasa-peft generate`` / ``predict``: run inputs through one base model carrying several KaSA adapters.

Each input line may name the adapter to use (see `kasa_peft.interop.serving` for the line formats);
untagged lines use the first ``--adapter``, or the base model when none is given. Inputs are grouped
by adapter and each group is run in batches with that adapter active.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..core import read_adapter
from ..interop import TaggedInput, load_adapters, read_tagged_inputs, run_by_adapter
from ..models import head_size, load_model
from ..tasks.glue import ClassificationExamples
from .base import best_device
from .classification import predict
from .generation import Decoding
from .run_dir import METRICS_FILE, RECORD_FIX, read_run


def generate_outputs(model_spec: str, adapters: Mapping[str, str], lines: Iterable[str], decoding: Decoding
                     ) -> list[dict[str, Any]]:
    """``{"adapter", "prompt", "output"}`` for every input line (``prompt`` or ``text`` field)."""
    model, tokenizer = load_model(model_spec, "causal_lm")
    inputs = read_tagged_inputs(lines, list(adapters), next(iter(adapters), None))
    load_adapters(model, adapters).to(best_device())
    outputs = run_by_adapter(model, inputs, lambda items: decoding.generate(model, tokenizer, [i.text for i in items]))
    return [{"adapter": item.adapter, "prompt": item.text, "output": output}
            for item, output in zip(inputs, outputs, strict=True)]


def predict_labels(model_spec: str, adapters: Mapping[str, str], lines: Iterable[str], max_length: int = 512,
                   batch_size: int = 32) -> list[dict[str, Any]]:
    """``{"adapter", "text", "label"}`` for every input line (``text`` and optional ``text_pair`` fields).

    Each adapter predicts with its own classification head, and its classes are named by the ``metrics.json``
    that ``kasa-peft train`` wrote next to it (without one, the label is the class id, or for a one-output
    head the score). Adapters whose heads have the same size share one base model; each other size gets a
    copy of its own. Lines for the base model (or every line, when no adapter is given) run on the first
    of these models.
    """
    sizes = {name: head_size(read_adapter(path)[1]) for name, path in adapters.items()}
    label_names = {name: recorded_label_names(path, sizes[name]) for name, path in adapters.items()}
    inputs = read_tagged_inputs(lines, list(adapters), next(iter(adapters), None))
    groups: dict[int | None, list[str]] = {}
    for name, size in sizes.items():
        groups.setdefault(size, []).append(name)
    labels: list[Any] = [None] * len(inputs)
    for number, (size, names) in enumerate(groups.items() or [(None, [])]):
        model, tokenizer = load_model(model_spec, "sequence_classification", size)
        load_adapters(model, {name: adapters[name] for name in names}).to(best_device())
        chosen = [i for i, item in enumerate(inputs) if item.adapter in names or (item.adapter is None and number == 0)]
        run = functools.partial(classify, model, tokenizer, max_length, batch_size)
        for index, prediction in zip(chosen, run_by_adapter(model, [inputs[i] for i in chosen], run), strict=True):
            adapter = inputs[index].adapter
            classes = label_names[adapter] if adapter is not None else None
            labels[index] = classes[prediction] if classes and isinstance(prediction, int) else prediction
    return [{"adapter": item.adapter, "text": item.text, "label": label}
            for item, label in zip(inputs, labels, strict=True)]


def classify(model, tokenizer, max_length: int, batch_size: int, items: list[TaggedInput]) -> list[int] | list[float]:
    """The predicted class id (or score) of each input's ``text`` (and ``text_pair``) with the active adapter."""
    paired = [item for item in items if item.fields.get("text_pair") is not None]
    if paired and len(paired) < len(items):
        raise ValueError(f"{len(paired)} of {len(items)} inputs have a text_pair: a pair classifier needs one in every "
                         "input line, a single-text one in none")
    pairs = [str(item.fields["text_pair"]) for item in paired] or None
    examples = ClassificationExamples([item.text for item in items], pairs, [0] * len(items))
    return predict(model, tokenizer, examples, max_length, batch_size)


def recorded_label_names(run_dir: str | Path | None, outputs: int | None = None) -> list[str] | None:
    """The class names a finished classification run recorded, if ``run_dir`` is one; they must be as many as
    the ``outputs`` of its classification head (default: read from the run's KaSA adapter)."""
    path = Path(run_dir) / METRICS_FILE if run_dir is not None else None
    if path is None or not path.is_file():
        return None
    assert run_dir is not None  # path was built from it
    names = read_run(run_dir).get("label_names")
    if names is not None and outputs is None:
        outputs = head_size(read_adapter(run_dir)[1])
    if names is not None and outputs is not None and len(names) != outputs:
        raise ValueError(f"{path} names {len(names)} classes but the adapter's classification head has {outputs} "
                         f"outputs: the record belongs to another run; {RECORD_FIX}")
    return names
