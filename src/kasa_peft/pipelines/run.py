"""One training run, start to finish: data, model, method, training, evaluation, ``metrics.json``.

The output directory holds, when a run has finished, the trained adapter (the whole model for ``fft``), the
evaluation's prediction files and ``metrics.json``, which is written last and atomically: a directory without
``metrics.json`` is not a result. ``run_config.json`` (the resolved settings) is written when training starts,
and Trainer checkpoints go to ``checkpoints/``; ``--resume`` continues from the latest one and they are removed
once the run has finished.
"""

from __future__ import annotations

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
from transformers.trainer_utils import get_last_checkpoint

from ..core.config import ALL_LINEAR
from ..core.files import default_permissions
from ..models import load_model
from ..training import KasaTrainer, MethodSpec, PreparedModel, load_trained, prepare_model
from ..training.distributed import barrier, is_main_process, on_main_process
from ..training.methods import METHOD_FILE
from ..version import __version__
from .base import Metrics, TaskPipeline, best_device, write_atomically
from .config import RunConfig
from .evaluation import PeriodicEvaluation, best_evaluation, evaluations
from .generation import PromptTargetPipeline
from .registry import build_pipeline
from .targets import default_target_modules

METRICS_FILE = "metrics.json"
RUN_CONFIG_FILE = "run_config.json"
CHECKPOINTS_DIR = "checkpoints"


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
    output_dir = Path(config.output_dir)
    check_output_dir(output_dir, config)
    barrier()  # no rank may write before every rank has checked the directory
    config, pipeline, tokenizer, features, steps, prepared = start(config)
    on_main_process(lambda: start_run_dir(output_dir, config), f"starting the run in {output_dir}")
    if is_main_process():
        print(f"kasa-peft: {steps} optimizer steps on {len(features)} examples; each evaluation "
              f"({evaluation_times(config)}) covers {pipeline.evaluation_summary()} "
              "(--max-eval-samples N evaluates a fixed subset)", file=sys.stderr)

    predictions_dir = output_dir if is_main_process() else None
    evaluation = PeriodicEvaluation(lambda m: pipeline.evaluate(m, tokenizer, predictions_dir), config.eval_steps,
                                    config.eval_every_epoch, pipeline.main_metric)
    trainer = KasaTrainer(model=prepared.model, args=training_arguments(config, output_dir / CHECKPOINTS_DIR, steps),
                          train_dataset=features, data_collator=pipeline.data_collator(tokenizer),
                          prepared=prepared, head_lr=config.head_lr, callbacks=[evaluation, *callbacks])
    checkpoint = latest_checkpoint(output_dir) if config.resume else None
    outcome = trainer.train(resume_from_checkpoint=checkpoint)
    final = evaluation.run(trainer.state, prepared.model)

    prepared.save(output_dir)
    history = evaluations(trainer.state.log_history)
    record = {
        "task": config.task, "method": config.method, "model": config.model, "main_metric": pipeline.main_metric,
        "label_names": pipeline.label_names,
        "best": best_evaluation(history, pipeline.main_metric), "final": final, "evaluations": history,
        "trainable_parameters": prepared.trainable_parameters().trainable,
        "total_parameters": prepared.trainable_parameters().total,
        "train_examples": len(features), "optimizer_steps": trainer.state.global_step,
        "train_loss": outcome.training_loss, "resumed_from": checkpoint,
        "wall_time_seconds": time.perf_counter() - started,  # of this invocation (a resumed run: since resuming)
        "seed": config.seed, "processes": trainer.args.world_size, "fsdp": trainer.is_fsdp_enabled,
        "versions": versions(), "device": str(next(prepared.model.parameters()).device),
        "config": config.to_dict(),
    }

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


def start(config: RunConfig) -> RunStart:
    """The state a run of ``config`` starts from. The seed is set first, so the same config gives the same
    initial adapter (``A``, ``sigma``) and classification head as the run had."""
    set_seed(config.seed)
    pipeline = build_pipeline(config)
    model, tokenizer = load_model(config.model, pipeline.model_task, pipeline.num_labels)
    config = finalise(config, model, tokenizer, pipeline)
    features = pipeline.train_features(tokenizer)
    steps = total_steps(config, len(features))
    return RunStart(config, pipeline, tokenizer, features, steps, prepare_model(model, method_spec(config, steps)))


def evaluate(config: RunConfig, adapter_dir: str | Path | None, output_dir: Path | None = None) -> Metrics:
    """Evaluate the trained model in ``adapter_dir`` (or, with ``None``, the untrained model) on ``config.task``.

    The base model is built as for training (same seed, so a new classification head is the same); prediction
    files go to ``output_dir`` when given.
    """
    set_seed(config.seed)
    pipeline = build_pipeline(config)
    model, tokenizer = load_model(config.model, pipeline.model_task, pipeline.num_labels)
    if adapter_dir is not None:
        recorded = (Path(adapter_dir) / METHOD_FILE).is_file()  # the method saved with a run wins over the default
        model = load_trained(model, adapter_dir, None if recorded else config.method)
    return pipeline.evaluate(model.to(best_device()), tokenizer, output_dir)


def latest_checkpoint(output_dir: Path) -> str | None:
    """The last Trainer checkpoint of an unfinished run (``None``: start from the beginning)."""
    checkpoints = output_dir / CHECKPOINTS_DIR
    return get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """The ``metrics.json`` of a finished run."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no finished run ({METRICS_FILE} is missing): pass the --output-dir "
                                "of a run that completed, or finish it with `kasa-peft train ... --resume`")
    return json.loads(path.read_text())


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
    """Create the run directory with ``run_config.json``; a resumed run must have the same settings (a setting the
    recorded file predates counts as its default)."""
    recorded = output_dir / RUN_CONFIG_FILE
    if recorded.is_file():
        before = json.loads(recorded.read_text())
        defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
        changed = sorted(k for k, v in config.to_dict().items()
                         if k != "resume" and before.get(k, defaults[k]) != v)
        if changed:
            raise ValueError(f"--resume: {output_dir} was started with different settings ({', '.join(changed)}); "
                             "resume with the original settings or choose another --output-dir")
        return
    write_atomically(recorded, json.dumps(config.to_dict(), indent=2) + "\n")


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
    targets = config.target_modules
    return MethodSpec(method=config.method, r=config.r, alpha=config.alpha, dropout=config.dropout,
                      target_modules=ALL_LINEAR if targets == [ALL_LINEAR] else tuple(targets),
                      beta=config.beta, gamma=config.gamma, regularizer=config.regularizer,
                      reduction=config.reduction, learn_sigma=config.learn_sigma,
                      drop_rank=config.drop_rank, drop_budget=config.drop_budget,
                      total_steps=steps)


def total_steps(config: RunConfig, num_examples: int) -> int:
    """The number of optimizer steps the Trainer will take."""
    if config.max_steps:
        return config.max_steps
    per_epoch = max(math.ceil(math.ceil(num_examples / config.batch_size) / config.gradient_accumulation_steps), 1)
    return math.ceil(config.epochs * per_epoch)


def training_arguments(config: RunConfig, checkpoints: Path, steps: int) -> TrainingArguments:
    """AdamW, linear schedule with ``warmup_ratio`` warm-up, checkpoints every ``save_steps`` (default: every epoch)."""
    return TrainingArguments(
        output_dir=str(checkpoints), learning_rate=config.lr, weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a fraction of the total steps
        lr_scheduler_type="linear", num_train_epochs=config.epochs, max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.batch_size, gradient_accumulation_steps=config.gradient_accumulation_steps,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        seed=config.seed, save_strategy="steps" if config.save_steps else "epoch", save_steps=config.save_steps or 500,
        save_total_limit=2, logging_steps=max(1, min(50, steps // 10)), report_to="none", eval_strategy="no",
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
