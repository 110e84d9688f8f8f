"""The run directory: what a run writes there, whether it holds a finished run, and where a resume continues.

A finished run's directory holds the trained adapter (the whole model for ``fft``), the evaluation's prediction
files and ``metrics.json``, which is written last and atomically: a directory without ``metrics.json`` is not a
result. ``run_config.json`` (the resolved settings) is written when training starts, and Trainer checkpoints go
to ``checkpoints/``; ``--resume`` continues from the newest complete one (a checkpoint being written when the run
was killed is skipped, with a warning) and they are removed once the run has finished. Once training has ended,
its steps and loss are kept in ``checkpoints/trained.json``, and once the final evaluation is done, the whole
record in ``checkpoints/record.json``, before the adapter is written: a run killed after training is finished by
``--resume`` from the last checkpoint and these, without training again (Trainer, resumed from its last step,
would take one more).
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from pathlib import Path
from typing import Any

from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_callback import TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..core.files import check_tensor_file, read_json_object
from ..training.methods import METHOD_FILE
from .base import write_atomically
from .config import RunConfig, normalise_settings

METRICS_FILE = "metrics.json"
RUN_CONFIG_FILE = "run_config.json"
CHECKPOINTS_DIR = "checkpoints"
PENDING_RECORD = "record.json"  # in checkpoints/: the finished run's record, before its adapter is written
TRAINED_FILE = "trained.json"  # in checkpoints/: steps and training loss, once training has ended
TRAINER_STATE = "trainer_state.json"  # Trainer writes it last into a checkpoint
RECORD_FIX = ("restore it from a copy, or evaluate the adapter with `kasa-peft eval --adapter DIR --model M --task T`, "
              "which needs no record")
# settings a resumed run may change: how the numbers are computed or reported, not what is trained (bf16
# changes the numbers a little; the record lists what changed, `changed_on_resume`)
CHANGEABLE_ON_RESUME = ("bf16", "gradient_checkpointing", "torch_compile", "report_to")


def latest_checkpoint(output_dir: Path) -> str | None:
    """The newest complete Trainer checkpoint of an unfinished run (``None``: start from the beginning).

    Trainer writes ``trainer_state.json`` after the model, optimizer, scheduler and RNG states; a checkpoint
    without a readable one was being written when the run was killed, and is skipped with a warning.
    """
    checkpoints = output_dir / CHECKPOINTS_DIR
    if not checkpoints.is_dir():
        return None
    numbered = {int(match[1]): p for p in checkpoints.iterdir()
                if p.is_dir() and (match := re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", p.name))}
    for _, checkpoint in sorted(numbered.items(), reverse=True):
        problem = _incomplete(checkpoint)
        if problem is None:
            check_checkpoint_files(checkpoint)
            return str(checkpoint)
        warnings.warn(f"--resume: skipping {checkpoint}: {problem}, so it was still being written when the run "
                      "stopped; resuming from the checkpoint before it", stacklevel=2)
    return None


def check_checkpoint_files(checkpoint: Path) -> None:
    """Every pickled file of ``checkpoint`` that resuming loads (optimizer, scheduler, RNG states, weights) must be
    plain tensors: anything else is an error naming the file, before the Trainer's loader fails without naming it."""
    from transformers.trainer_pt_utils import safe_globals  # the numpy types Trainer allows in rng_state.pth

    for path in sorted(checkpoint.iterdir()):
        if path.suffix in (".pt", ".pth", ".bin") and path.name != TRAINING_ARGS_NAME:
            check_tensor_file(path, f"delete {checkpoint} to resume from the checkpoint before it, or delete "
                                    f"{checkpoint.parent.parent} and train again", allowed=safe_globals)


def _incomplete(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` is incomplete, or ``None`` when its ``trainer_state.json`` is whole."""
    state = checkpoint / TRAINER_STATE
    if not state.is_file():
        return f"it has no {TRAINER_STATE}"
    try:
        TrainerState.load_from_json(str(state))
    except (ValueError, TypeError, UnicodeDecodeError):
        return f"its {TRAINER_STATE} is cut off"
    return None


def saved_by_a_trainer(directory: str | Path) -> bool:
    """Whether ``directory`` is what a Trainer's ``save_model`` wrote (``KasaSFTTrainer``, ``KasaDPOTrainer``, a
    ``KasaTrainerMixin`` trainer): an adapter with its method record, but no run record of ``kasa-peft train``."""
    directory = Path(directory)
    return (directory / METHOD_FILE).is_file() and not (directory / METRICS_FILE).is_file()


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """The ``metrics.json`` of a finished run."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no finished run ({METRICS_FILE} is missing): pass the --output-dir "
                                "of a run that completed, or finish it with `kasa-peft train ... --resume`")
    record = read_json_object(path, RECORD_FIX)
    labels = record.get("label_names")
    if not isinstance(record.get("config"), dict) or not (
            labels is None or (isinstance(labels, list) and all(isinstance(name, str) for name in labels))):
        raise ValueError(f"{path} is damaged: it needs a 'config' mapping and 'label_names' (a list of class names, "
                         f"or null): {RECORD_FIX}")
    known = {f.name for f in dataclasses.fields(RunConfig)}  # (a setting of another version is left to `eval`)
    normalise_settings({k: v for k, v in record["config"].items() if k in known}, str(path))  # of the right type
    return record


def resume_fix(output_dir: Path) -> str:
    """What to do when a record an unfinished run keeps is damaged."""
    return f"the unfinished run cannot be resumed; delete {output_dir} and train again"


def check_output_dir(output_dir: Path, config: RunConfig) -> None:
    """Refuse to overwrite a finished run, or to mix a new run into an unfinished one without ``--resume``."""
    if (output_dir / METRICS_FILE).exists():
        raise FileExistsError(f"{output_dir} already holds a finished run ({METRICS_FILE}): choose another "
                              "--output-dir, or delete that one")
    if not output_dir.exists() or not any(output_dir.iterdir()):
        return
    recorded = output_dir / RUN_CONFIG_FILE
    if not config.resume:
        raise FileExistsError(f"{output_dir} is not empty: pass --resume to continue the unfinished run in it, or "
                              "choose another --output-dir")
    if not recorded.is_file():
        raise FileNotFoundError(f"{output_dir} holds no {RUN_CONFIG_FILE}, so it is not a run to resume: "
                                "choose another --output-dir")


def start_run_dir(output_dir: Path, config: RunConfig) -> None:
    """Create the run directory with ``run_config.json``; a resumed run must have the same settings, but for
    `CHANGEABLE_ON_RESUME`."""
    recorded = output_dir / RUN_CONFIG_FILE
    if recorded.is_file():
        changed = sorted(name for name in _changed_settings(output_dir, config) if name not in CHANGEABLE_ON_RESUME)
        if changed:
            raise ValueError(f"--resume: {output_dir} was started with different settings ({', '.join(changed)}); "
                             "resume with the original settings or choose another --output-dir")
        return
    write_atomically(recorded, json.dumps(config.to_dict(), indent=2) + "\n")


def changed_on_resume(output_dir: Path, config: RunConfig) -> dict[str, dict[str, Any]]:
    """The settings of `CHANGEABLE_ON_RESUME` that differ from those the run in ``output_dir`` was started with
    (``run_config.json``): ``{name: {"started": value, "resumed": value}}``; empty for a run never resumed."""
    return {name: {"started": before, "resumed": now}
            for name, (before, now) in _changed_settings(output_dir, config).items() if name in CHANGEABLE_ON_RESUME}


def _changed_settings(output_dir: Path, config: RunConfig) -> dict[str, tuple[Any, Any]]:
    """``{name: (recorded, now)}`` for the settings, but ``resume``, that differ from ``run_config.json``'s (a
    setting the recorded file predates counts as its default); empty when there is no such file."""
    recorded = output_dir / RUN_CONFIG_FILE
    if not recorded.is_file():
        return {}
    before = read_json_object(recorded, resume_fix(output_dir))
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    return {name: (before.get(name, defaults[name]), now) for name, now in config.to_dict().items()
            if name != "resume" and before.get(name, defaults[name]) != now}


def check_final_checkpoint(checkpoint: str, optimizer_steps: int | None, source: Path) -> TrainerState:
    """The state of ``checkpoint``, which must be the one training ended at (``optimizer_steps``, from
    ``source``)."""
    state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE))
    if state.global_step != optimizer_steps:
        raise ValueError(f"--resume: {source} records {optimizer_steps} steps but the newest complete checkpoint is "
                         f"{checkpoint}; delete {source.parent.parent} and train again")
    return state
