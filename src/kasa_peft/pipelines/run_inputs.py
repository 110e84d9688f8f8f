"""What a run trains on, as sha256 digests: its training data and its base weights, so a resumed run is the same run.

``run_inputs.json`` in the run directory holds, from the start of the run:

* ``train_data_sha256``: the tokenised training examples in order (each example's fields as canonical JSON), so
  a changed ``--train-file``, data directory, sample count or tokenizer gives another digest;
* ``base_weights_sha256``: every tensor of the model as loaded, before any method changed it (names, dtypes,
  shapes and bytes: `kasa_peft.core.io.tensor_checksum`), but a new classification head's.

``--resume`` recomputes both and stops, naming what changed, when they differ; the finished record keeps them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..core.files import read_json_object, write_text_atomically
from ..core.io import tensor_checksum
from ..training.methods import classification_head_names

RUN_INPUTS_FILE = "run_inputs.json"
WHAT = {"train_data_sha256": "the training data (the --train-file / --data-dir examples as tokenised)",
        "base_weights_sha256": "the base model's weights (--model)"}


def data_fingerprint(features: Sequence[dict[str, Any]]) -> str:
    """sha256 over the training examples in order, each as canonical JSON."""
    digest = hashlib.sha256()
    for feature in features:
        digest.update(json.dumps(feature, sort_keys=True, separators=(",", ":"), default=_plain).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over every tensor of ``model``'s state dict (`tensor_checksum`) but a new classification head's
    (random, from the seed: the checkpoint restores it)."""
    heads = tuple(f"{name}." for name in classification_head_names(model))
    return tensor_checksum({k: v for k, v in model.state_dict().items() if not k.startswith(heads)})


def _plain(value: Any) -> Any:
    """A tensor or array in a feature, as a list (JSON has no tensors)."""
    return value.tolist()


def check_run_inputs(output_dir: Path, inputs: dict[str, str]) -> None:
    """Record ``inputs`` in ``output_dir`` when the run starts; on a resume, raise ``ValueError`` naming each input
    that differs from the recorded one. (A run started before inputs were recorded gets them recorded now.)"""
    path = output_dir / RUN_INPUTS_FILE
    if not path.is_file():
        write_text_atomically(path, json.dumps(inputs, indent=2) + "\n")
        return
    recorded = read_json_object(path, f"the unfinished run cannot be checked; delete {output_dir} and train again")
    changed = [WHAT.get(key, key) for key, value in inputs.items() if recorded.get(key) != value]
    if changed:
        raise ValueError(f"--resume: {' and '.join(changed)} differ from what the run in {output_dir} started with "
                         f"({path} records other sha256 digests), so resuming would mix two runs: resume with the "
                         "data and model it started with, or train into a new --output-dir")
