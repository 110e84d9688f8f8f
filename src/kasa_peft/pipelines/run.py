"""One training run, start to finish: data, model, method, training, evaluation, ``metrics.json``.

The output directory holds, when a run has finished, the trained adapter (the whole model for ``fft``), the
evaluation's prediction files and ``metrics.json``, which is written last and atomically: a directory without
``metrics.json`` is not a result. ``run_config.json`` (the resolved settings) is written when training starts,
and Trainer checkpoints go to ``checkpoints/``; ``--resume`` continues from the newest complete one (a
checkpoint being written when the run was killed is skipped, with a warning) and they are removed once the run
has finished. Once training has ended, its steps and loss are kept in ``checkpoints/trained.json``, and once the
final evaluation is done, the whole record in ``checkpoints/record.json``, before the adapter is written: a run
killed after training is finished by ``--resume`` from the last checkpoint and these, without training again
(Trainer, resumed from its last step, would take one more). One process at a time trains into a directory
(`run_lock.run_directory_lock`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import platform
import re
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from transformers import TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import TrainerState
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..core.config import ALL_LINEAR
from ..core.files import check_tensor_file, default_permissions, read_json_object, reporting_full_disk
from ..models import load_model
from ..training import KasaTrainer, MethodSpec, PreparedModel, load_trained, prepare_model
from ..training.distributed import barrier, is_main_process, on_main_process
from ..training.methods import METHOD_FILE, recorded_method
from ..version import __version__
from .base import Metrics, ModelTask, TaskPipeline, best_device, write_atomically
from .config import Quantization, RunConfig, normalise_settings, required
from .evaluation import PeriodicEvaluation, best_evaluation, evaluations, training_losses
from .generation import Decoding, PromptTargetPipeline
from .method_fit import check_method_fits_model
from .provenance import source_revision
from .registry import build_pipeline
from .reporting import keep_tensorboard_logs_in, reporting_backends
from .task_names import check_evaluation_modules
from .run_inputs import check_run_inputs, data_fingerprint, weights_fingerprint
from .run_lock import run_directory_lock
from .targets import default_target_modules

METRICS_FILE = "metrics.json"
RUN_CONFIG_FILE = "run_config.json"
CHECKPOINTS_DIR = "checkpoints"
PENDING_RECORD = "record.json"  # in checkpoints/: the finished run's record, before its adapter is written
TRAINED_FILE = "trained.json"  # in checkpoints/: steps and training loss, once training has ended
TRAINER_STATE = "trainer_state.json"  # Trainer writes it last into a checkpoint
RECORD_KEYS = ("task", "method", "model", "main_metric", "best", "final", "trainable_parameters", "total_parameters",
               "wall_time_seconds", "optimizer_steps", "config")  # what a finished run's record always holds
RECORD_FIX = ("restore it from a copy, or evaluate the adapter with `kasa-peft eval --adapter DIR --model M --task T`, "
              "which needs no record")
# settings a resumed run may change: how the numbers are computed or reported, not what is trained (bf16
# changes the numbers a little; the record lists what changed, `changed_on_resume`)
CHANGEABLE_ON_RESUME = ("bf16", "gradient_checkpointing", "torch_compile", "report_to")


@dataclass
class RunResult:
    output_dir: Path
    record: dict[str, Any]  # what metrics.json holds


def train(config: RunConfig, callbacks: Sequence[TrainerCallback] = ()) -> RunResult:
    """Train ``config.method`` on ``config.task`` and write the run to ``config.output_dir`` (module docstring).

    Everything that can be wrong with the input (data, model, method, rank) is checked before the output
    directory is touched. ``callbacks`` are added to the Trainer's. Under ``torchrun`` / ``accelerate launch``
    every rank runs this; rank 0 alone writes files, and every rank evaluates on the whole evaluation set
    (FSDP needs all ranks in each forward pass).
    """
    started = time.perf_counter()
    if not config.output_dir:
        raise ValueError("missing --output-dir: name the directory that receives the adapter and metrics.json")
    check_evaluation_modules(config.task)
    reporting_backends(config.report_to)  # an unknown or missing logging backend fails before anything loads
    output_dir = Path(config.output_dir)
    with run_directory_lock(output_dir) if is_main_process() else contextlib.nullcontext():
        return _train_locked(config, output_dir, started, callbacks)


def _train_locked(config: RunConfig, output_dir: Path, started: float,
                  callbacks: Sequence[TrainerCallback]) -> RunResult:
    check_output_dir(output_dir, config)
    barrier()  # no rank may write before every rank has checked the directory
    config, pipeline, tokenizer, features, steps, prepared, base_weights = start(config, fingerprint=True)
    assert base_weights is not None  # start(fingerprint=True)
    inputs = {"train_data_sha256": data_fingerprint(features), "base_weights_sha256": base_weights}
    on_main_process(lambda: check_run_inputs(output_dir, inputs), f"checking the inputs of the run in {output_dir}")
    on_main_process(lambda: start_run_dir(output_dir, config), f"starting the run in {output_dir}")
    pending, trained = output_dir / CHECKPOINTS_DIR / PENDING_RECORD, output_dir / CHECKPOINTS_DIR / TRAINED_FILE
    checkpoint = latest_checkpoint(output_dir) if config.resume else None
    if checkpoint is not None and pending.is_file():  # trained and evaluated; killed before metrics.json
        record = read_json_object(pending, resume_fix(output_dir))
        missing = [key for key in RECORD_KEYS if key not in record]
        if missing:
            raise ValueError(f"{pending} is damaged (no {', '.join(missing)}): {resume_fix(output_dir)}")
        _check_final_checkpoint(checkpoint, record.get("optimizer_steps"), pending)
        prepared.load_checkpoint(checkpoint)
        return _finish(output_dir, prepared, record)
    if is_main_process():
        print(f"kasa-peft: {steps} optimizer steps on {len(features)} examples; each evaluation "
              f"({evaluation_times(config)}) covers {pipeline.evaluation_summary()} "
              "(--max-eval-samples N evaluates a fixed subset)", file=sys.stderr)

    predictions_dir = output_dir if is_main_process() else None
    evaluation = PeriodicEvaluation(lambda m: pipeline.evaluate(m, tokenizer, predictions_dir), config.eval_steps,
                                    required(config.eval_every_epoch, "eval_every_epoch"), pipeline.main_metric)
    trainer = KasaTrainer(model=prepared.model, args=training_arguments(config, output_dir / CHECKPOINTS_DIR, steps),
                          train_dataset=features, data_collator=pipeline.data_collator(tokenizer),
                          prepared=prepared, head_lr=config.head_lr, callbacks=[evaluation, *callbacks])
    keep_tensorboard_logs_in(trainer, output_dir)
    if checkpoint is not None and trained.is_file():  # trained; killed before its record was kept
        outcome = read_json_object(trained, resume_fix(output_dir))
        state = _check_final_checkpoint(checkpoint, outcome.get("optimizer_steps"), trained)
        prepared.load_checkpoint(checkpoint)
    else:
        result = trainer.train(resume_from_checkpoint=checkpoint)
        state = trainer.state
        outcome = {"optimizer_steps": state.global_step, "train_loss": result.training_loss, "resumed_from": checkpoint}
        on_main_process(lambda: write_atomically(trained, json.dumps(outcome) + "\n"), f"writing {trained}")
    final = evaluation.run(state, prepared.model)

    history = evaluations(state.log_history)
    record = {
        "task": config.task, "method": config.method, "model": config.model, "main_metric": pipeline.main_metric,
        "label_names": pipeline.label_names,
        "best": best_evaluation(history, pipeline.main_metric), "final": final, "evaluations": history,
        "trainable_parameters": prepared.trainable_parameters().trainable,
        "total_parameters": prepared.trainable_parameters().total,
        "train_examples": len(features), **outcome, "losses": training_losses(state.log_history),
        "wall_time_seconds": time.perf_counter() - started,  # of this invocation (a resumed run: since resuming)
        "seed": config.seed, "processes": trainer.args.world_size, "fsdp": trainer.is_fsdp_enabled,
        "versions": versions(), "device": str(next(prepared.model.parameters()).device),
        "source": source_revision(),  # the git commit of the code that finished the run, and whether it was dirty
        "evaluation": pipeline.evaluation_switches(),  # how the numbers were computed beyond the settings
        "config": config.to_dict(),
        "inputs": inputs,  # sha256 of the training data and the base weights, checked on every --resume
        "changed_on_resume": changed_on_resume(output_dir, config),
    }
    on_main_process(lambda: write_atomically(pending, json.dumps(record, indent=2) + "\n"),
                    f"writing {pending}")
    return _finish(output_dir, prepared, record)


def _check_final_checkpoint(checkpoint: str, optimizer_steps: int | None, source: Path) -> TrainerState:
    """The state of ``checkpoint``, which must be the one training ended at (``optimizer_steps``, from
    ``source``)."""
    state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE))
    if state.global_step != optimizer_steps:
        raise ValueError(f"--resume: {source} records {optimizer_steps} steps but the newest complete checkpoint is "
                         f"{checkpoint}; delete {source.parent.parent} and train again")
    return state


def _finish(output_dir: Path, prepared: PreparedModel, record: dict[str, Any]) -> RunResult:
    """Write the trained adapter, then ``metrics.json``, then remove the checkpoints."""
    with reporting_full_disk(output_dir):  # the PEFT baselines' save_pretrained writes in place
        prepared.save(output_dir)

    def finish() -> None:
        default_permissions(output_dir)  # what the method's saving wrote (safetensors files are 0600)
        write_atomically(output_dir / METRICS_FILE, json.dumps(record, indent=2) + "\n")
        shutil.rmtree(output_dir / CHECKPOINTS_DIR, ignore_errors=True)
    on_main_process(finish, f"writing {output_dir / METRICS_FILE}")
    return RunResult(output_dir, record)


class RunStart(NamedTuple):
    """What a run starts from (`start`)."""

    config: RunConfig  # with its model-dependent defaults filled in
    pipeline: TaskPipeline
    tokenizer: Any
    features: Any  # the training features
    steps: int  # optimizer steps
    prepared: PreparedModel  # the model prepared for the method, before any step
    base_weights: str | None = None  # `weights_fingerprint` of the model as loaded (with ``fingerprint=True``)


def start(config: RunConfig, fingerprint: bool = False) -> RunStart:
    """The state a run of ``config`` starts from. The seed is set first, so the same config gives the same
    initial adapter (``A``, ``sigma``) and classification head as the run had. ``fingerprint``: also the sha256
    of the model's weights as loaded, before the method changes them (`run_inputs`)."""
    set_seed(config.seed)
    pipeline = build_pipeline(config)
    check_method_fits_model(config.method, config.model, pipeline.model_task)  # before the weights load
    model, tokenizer = load_model(config.model, pipeline.model_task, pipeline.num_labels,
                                  quantize=config.quantize)
    config = finalise(config, model, tokenizer, pipeline)
    features = pipeline.train_features(tokenizer)
    steps = total_steps(config, len(features))
    base_weights = weights_fingerprint(model) if fingerprint else None
    return RunStart(config, pipeline, tokenizer, features, steps, prepare_model(model, method_spec(config, steps)),
                    base_weights)


def evaluate(config: RunConfig, adapter_dir: str | Path | None, output_dir: Path | None = None) -> Metrics:
    """Evaluate the trained model in ``adapter_dir`` (or, with ``None``, the untrained model) on ``config.task``.

    The base model is built as for training (same seed, so a new classification head is the same); prediction
    files go to ``output_dir`` when given.
    """
    check_evaluation_modules(config.task)
    set_seed(config.seed)
    pipeline = build_pipeline(config)
    model, tokenizer = load_with_adapter(config.model, adapter_dir, config.method, pipeline.model_task,
                                         pipeline.num_labels, quantize=config.quantize)
    return pipeline.evaluate(model, tokenizer, output_dir)


def evaluate_with_harness(config: RunConfig, adapter_dir: str | Path | None, tasks: list[str]) -> Metrics:
    """lm-evaluation-harness's metrics for ``tasks`` on the model of ``evaluate`` (its adapter merged)."""
    from .harness import run_harness

    model, tokenizer = load_with_adapter(config.model, adapter_dir, config.method, quantize=config.quantize)
    chat = Decoding.from_config(config).chat_template(tokenizer)
    return run_harness(model, tokenizer, tasks, config.data_dir, chat,
                       config.evaluation_batch_size, config.max_eval_samples)


def load_with_adapter(model_spec: str, adapter_dir: str | Path | None, method: str = "kasa",
                      model_task: ModelTask = "causal_lm", num_labels: int | None = None,
                      quantize: Quantization | None = None) -> tuple[nn.Module, Any]:
    """``model_spec`` (quantized as ``quantize`` says) with the trained adapter (or whole model) of any method in
    ``adapter_dir``, on the best device; ``method`` applies to a directory that does not record its own."""
    if adapter_dir is not None:
        recorded = (Path(adapter_dir) / METHOD_FILE).is_file()  # the method saved with a run wins over the default
        method = recorded_method(adapter_dir, None if recorded else method)  # a damaged record fails before loading
    loaded, tokenizer = load_model(model_spec, model_task, num_labels, quantize=quantize)
    model: nn.Module = loaded if adapter_dir is None else load_trained(loaded, adapter_dir, method)
    return model.to(best_device()), tokenizer


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


def finalise(config: RunConfig, model: nn.Module, tokenizer, pipeline: TaskPipeline) -> RunConfig:
    """The config with the model-dependent defaults filled in (target modules, chat template)."""
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and config.max_length > positions:
        raise ValueError(f"--max-length {config.max_length} exceeds the {positions} positions of {config.model}: "
                         f"pass --max-length {positions} or less")
    changes: dict[str, Any] = {}
    if config.target_modules is None:
        changes["target_modules"] = default_target_modules(model, config.family)
    if isinstance(pipeline, PromptTargetPipeline):
        changes["use_chat_template"] = pipeline.decoding.chat_template(tokenizer)
    return config.replace(**changes)


def evaluation_times(config: RunConfig) -> str:
    """When a run evaluates, for people."""
    times = [f"every {config.eval_steps} steps"] if config.eval_steps else []
    times += ["every epoch"] if config.eval_every_epoch else []
    return ", ".join([*times, "at the end"])


def method_spec(config: RunConfig, steps: int) -> MethodSpec:
    targets = required(config.target_modules, "target_modules")  # `finalise` chose them where the config did not
    return MethodSpec(method=config.method, r=config.r, alpha=config.alpha, dropout=config.dropout,
                      target_modules=ALL_LINEAR if targets == [ALL_LINEAR] else tuple(targets),
                      beta=config.beta, gamma=config.gamma, regularizer=config.regularizer,
                      reduction=config.reduction, learn_sigma=config.learn_sigma,
                      sigma_init=config.sigma_init, drop_rank=config.drop_rank, drop_budget=config.drop_budget,
                      total_steps=steps)


def total_steps(config: RunConfig, num_examples: int) -> int:
    """The number of optimizer steps the Trainer will take."""
    if config.max_steps:
        return config.max_steps
    batches = math.ceil(num_examples / required(config.batch_size, "batch_size"))
    per_epoch = max(math.ceil(batches / config.gradient_accumulation_steps), 1)
    return math.ceil(required(config.epochs, "epochs") * per_epoch)


# transformers 5.23 renamed TrainingArguments' gradient_checkpointing (since a deprecated alias) to
# activation_checkpointing
CHECKPOINTING_ARGUMENT = next(name for name in ("activation_checkpointing", "gradient_checkpointing")
                              if name in {field.name for field in dataclasses.fields(TrainingArguments)})


def training_arguments(config: RunConfig, checkpoints: Path, steps: int) -> TrainingArguments:
    """AdamW, linear schedule with ``warmup_ratio`` warm-up, checkpoints every ``save_steps`` (default: every epoch);
    bf16 autocast, activation checkpointing (non-reentrant, transformers' default), ``torch.compile`` (inductor) and
    the logging backends as the config says."""
    checkpointing: dict[str, Any] = {CHECKPOINTING_ARGUMENT: config.gradient_checkpointing}
    return TrainingArguments(
        output_dir=str(checkpoints), learning_rate=required(config.lr, "lr"), weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a fraction of the total steps
        lr_scheduler_type="linear", num_train_epochs=required(config.epochs, "epochs"),
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=required(config.batch_size, "batch_size"),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        seed=config.seed, save_strategy="steps" if config.save_steps else "epoch", save_steps=config.save_steps or 500,
        save_total_limit=2, logging_steps=max(1, min(50, steps // 10)), eval_strategy="no",
        report_to=reporting_backends(config.report_to) or "none", bf16=config.bf16, torch_compile=config.torch_compile,
        **checkpointing,
        dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available(), disable_tqdm=False,
        remove_unused_columns=False,
        use_cpu=not torch.accelerator.is_available(),  # else torchrun on a CPU-only machine trains each rank alone
    )


def versions() -> dict[str, str | None]:
    """Versions of what produced the numbers."""
    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None
    return {"kasa-peft": __version__, "torch": torch.__version__, "transformers": installed("transformers"),
            "peft": installed("peft"), "python": platform.python_version()}
