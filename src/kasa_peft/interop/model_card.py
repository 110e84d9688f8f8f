"""The model card (``README.md``) of a PEFT-format export: its base, its task, and a classifier's class names.

PEFT's ``adapter_config.json`` has no field for class names, and ``AutoPeftModelForSequenceClassification``
as well as transformers' ``pipeline`` take the config of the base model, whose labels are ``LABEL_0``, ...
So the names travel in the card the Hub shows: listed, and in the loading snippet as ``id2label``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

CARD_NAME = "README.md"
AUTO_CLASSES = {"SEQ_CLS": "AutoPeftModelForSequenceClassification", "CAUSAL_LM": "AutoPeftModelForCausalLM"}
PIPELINE_TAGS = {"SEQ_CLS": "text-classification", "CAUSAL_LM": "text-generation"}


def loading_snippet(location: Path, task_type: str, label_names: Sequence[str] | None) -> str:
    """Python that loads the export at ``location`` with PEFT, with the class names when there are any."""
    auto_class = AUTO_CLASSES[task_type]
    labels = ""
    if label_names:
        id2label = dict(enumerate(label_names))
        label2id = {label: i for i, label in enumerate(label_names)}
        labels = f",\n    id2label={id2label!r},\n    label2id={label2id!r}"
    return (f"from peft import {auto_class}\n\n"
            f"model = {auto_class}.from_pretrained(\n    {str(location)!r}{labels},\n)\n")


def write_model_card(out: Path, location: Path, base_model: str | None, task_type: str, method: str,
                     label_names: Sequence[str] | None) -> None:
    """Write ``out/README.md`` for the export that will live at ``location`` (``out`` may be its staging)."""
    from huggingface_hub import ModelCardData

    data = ModelCardData(base_model=base_model, library_name="peft", pipeline_tag=PIPELINE_TAGS[task_type],
                         tags=sorted({"kasa", "kasa-peft", method.lower()}))
    classes = ""
    if label_names:
        classes = "## Classes\n\n" + "".join(f"- {i}: {json.dumps(name)}\n" for i, name in enumerate(label_names))
        classes += "\n"
    text = (f"---\n{data.to_yaml()}\n---\n\n# KaSA adapter, exported as PEFT {method}\n\n"
            f"Trained with kasa-peft (KaSA, arXiv 2412.06071) on `{base_model or 'an unrecorded base model'}`.\n\n"
            f"{classes}"
            f"## Loading\n\n```python\n{loading_snippet(location, task_type, label_names)}```\n")
    (out / CARD_NAME).write_text(text, encoding="utf-8")
