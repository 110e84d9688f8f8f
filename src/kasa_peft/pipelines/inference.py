"""``kasa-peft generate`` / ``predict``: run inputs through one base model carrying several KaSA adapters.

Each input line may name the adapter to use (see `kasa_peft.interop.serving` for the line formats);
untagged lines use the first ``--adapter``, or the base model when none is given. Inputs are grouped
by adapter and each group is run in batches with that adapter active.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..interop import load_adapters, read_tagged_inputs, run_by_adapter
from ..models import load_model
from ..tasks.glue import ClassificationExamples
from .base import best_device
from .classification import predict
from .generation import Decoding
from .run import METRICS_FILE


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

    Class names come from the ``metrics.json`` that ``kasa-peft train`` writes next to the first adapter;
    without it the label is the class id (or, for a one-output head, the score).
    """
    label_names = recorded_label_names(next(iter(adapters.values()), None))
    model, tokenizer = load_model(model_spec, "sequence_classification", len(label_names) if label_names else None)
    inputs = read_tagged_inputs(lines, list(adapters), next(iter(adapters), None))
    load_adapters(model, adapters).to(best_device())

    def run(items: list) -> list:
        pairs = [item.fields.get("text_pair") for item in items]
        examples = ClassificationExamples([item.text for item in items], pairs if any(pairs) else None,
                                          [0] * len(items))
        return predict(model, tokenizer, examples, max_length, batch_size)

    predictions = run_by_adapter(model, inputs, run)
    return [{"adapter": item.adapter, "text": item.text,
             "label": label_names[p] if label_names and isinstance(p, int) else p}
            for item, p in zip(inputs, predictions, strict=True)]


def recorded_label_names(run_dir: str | Path | None) -> list[str] | None:
    """The class names a finished classification run recorded, if ``run_dir`` is one."""
    path = Path(run_dir) / METRICS_FILE if run_dir is not None else None
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text()).get("label_names")
