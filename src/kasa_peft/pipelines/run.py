"""One training run, start to finish: data, model, method, training, evaluation, ``metrics.json``.

What the run directory holds, and how a killed run resumes, is `run_dir`'s. One process at a time trains into a
directory (`run_lock.run_directory_lock`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from transformers import TrainerCallback, TrainingArguments, set_seed

from ..core.config import ALL_LINEAR
from ..core.files import default_permissions, read_json_object, reporting_full_disk
from ..models import load_model
from ..training import KasaTrainer, MethodSpec, PreparedModel, load_trained, prepare_model
from ..training.distributed import barrier, is_main_process, on_main_process
from ..training.methods import METHOD_FILE, recorded_method
from ..version import __version__
from .base import Metrics, ModelTask, TaskPipeline, best_device, write_atomically
from .config import Quantization, RunConfig, required
from .evaluation import PeriodicEvaluation, best_evaluation, evaluations, training_losses
from .generation import Decoding, PromptTargetPipeline
from .method_fit import check_method_fits_model
from .provenance import source_revision
from .registry import build_pipeline
from .reporting import keep_tensorboard_logs_in, reporting_backends
from .task_names import check_evaluation_modules
from .run_inputs import check_run_inputs, data_fingerprint, weights_fingerprint
from .run_dir import (
    CHECKPOINTS_DIR, METRICS_FILE, PENDING_RECORD, TRAINED_FILE, changed_on_resume, check_final_checkpoint,
    check_output_dir, latest_checkpoint, resume_fix, start_run_dir,
)
from .run_lock import run_directory_lock
from .targets import default_target_modules

RECORD_KEYS = ("task", "method", "model", "main_metric", "best", "final", "trainable_parameters", "total_parameters",
               "wall_time_seconds", "optimizer_steps", "config")  # what a finished run's record always holds


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
        check_final_checkpoint(checkpoint, record.get("optimizer_steps"), pending)
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
        state = check_final_checkpoint(checkpoint, outcome.get("optimizer_steps"), trained)
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
