"""The runner: resume equals an uninterrupted run, output-directory rules, nothing passed off after a failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from kasa_peft.pipelines.config import resolve_config
from kasa_peft.pipelines.evaluation import best_evaluation
from kasa_peft.pipelines.run import start, train
from kasa_peft.pipelines.run_dir import CHECKPOINTS_DIR, METRICS_FILE, RUN_CONFIG_FILE

from .helpers import write_classification_files


class Interrupt(TrainerCallback):
    """Stops training with an exception at the end of step ``at_step`` (after the checkpoint before it)."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            raise KeyboardInterrupt


class Snapshot(TrainerCallback):
    """Copies the trainable parameters when training begins."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.parameters = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture
def config(bert_dir, tmp_path):
    train_file, eval_file = write_classification_files(tmp_path, rows=30)

    def make(out: str, **changes):
        return resolve_config({}, {"task": "classify", "model": bert_dir, "output_dir": str(tmp_path / out),
                                   "train_file": str(train_file), "eval_file": str(eval_file),
                                   "text_columns": "review", "label_column": "label", "max_length": 64,
                                   "batch_size": 4, "max_steps": 5, "save_steps": 2, "eval_steps": 1,
                                   "dropout": 0.1, "seed": 3, **changes})
    return make


def test_resumed_run_equals_uninterrupted_run(config):
    uninterrupted = train(config("a"))
    interrupted = config("b")
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, callbacks=[Interrupt(at_step=3)])
    assert (Path(interrupted.output_dir) / CHECKPOINTS_DIR / "checkpoint-2").is_dir()
    assert not (Path(interrupted.output_dir) / METRICS_FILE).exists()
    resumed = train(interrupted.replace(resume=True))

    assert resumed.record["resumed_from"].endswith("checkpoint-2")
    expected, actual = (load_file(r.output_dir / "adapter_model.safetensors") for r in (uninterrupted, resumed))
    assert expected.keys() == actual.keys()
    for key in expected:
        assert (expected[key] - actual[key]).abs().max() <= 1e-6, key
    # evaluations made before the interruption are kept (saved with the checkpoint), the others redone
    assert [e["step"] for e in resumed.record["evaluations"]] == [1, 2, 3, 4, 5]
    for got, want in zip(resumed.record["evaluations"], uninterrupted.record["evaluations"], strict=True):
        assert (got["step"], got["epoch"]) == (want["step"], want["epoch"])
        assert got["metrics"] == pytest.approx(want["metrics"])
    assert not (resumed.output_dir / CHECKPOINTS_DIR).exists()
    # the learning curve, one entry per logged step (here every step), survives the interruption too
    assert [e["step"] for e in resumed.record["losses"]] == [1, 2, 3, 4, 5]
    for got, want in zip(resumed.record["losses"], uninterrupted.record["losses"], strict=True):
        assert got == pytest.approx(want)
        assert got["loss"] == pytest.approx(got["task_loss"] + got["reg_l2"] + got["reg_l3"], rel=1e-5)


def test_start_rebuilds_the_state_a_run_started_from(config):
    snapshot = Snapshot()
    train(config("a", max_steps=1), callbacks=[snapshot])
    begun = start(config("b", max_steps=1))
    rebuilt = {n: p for n, p in begun.prepared.model.named_parameters() if p.requires_grad}
    assert rebuilt.keys() == snapshot.parameters.keys()
    assert any(n.endswith("sigma") for n in rebuilt)
    for name, value in snapshot.parameters.items():
        assert torch.equal(rebuilt[name], value), name
    assert begun.config.target_modules  # the model-dependent default is filled in
    assert begun.steps == 1


def test_output_directory_rules(config):
    first = train(config("run", max_steps=1, resume=True))  # nothing to resume: starts from the beginning
    assert first.record["resumed_from"] is None
    with pytest.raises(FileExistsError, match="already holds a finished run"):
        train(config("run", max_steps=1))
    with pytest.raises(FileExistsError, match="not empty: pass --resume"):
        (first.output_dir.parent / "other").mkdir()
        (first.output_dir.parent / "other" / "notes.txt").write_text("mine")
        train(config("other", max_steps=1))
    unfinished = config("unfinished")
    with pytest.raises(KeyboardInterrupt):
        train(unfinished, callbacks=[Interrupt(at_step=3)])
    with pytest.raises(ValueError, match="different settings \\(lr\\)"):
        train(unfinished.replace(resume=True, lr=1e-3))
    run_dir = Path(unfinished.output_dir)
    assert json.loads((run_dir / RUN_CONFIG_FILE).read_text())["lr"] == unfinished.lr
    assert not (run_dir / METRICS_FILE).exists()


def test_best_evaluation_skips_missing_and_nan_and_keeps_the_earliest_tie():
    history = [{"step": s, "metrics": {"acc": v}} for s, v in ((1, None), (2, 0.5), (3, float("nan")), (4, 0.5),
                                                              (5, 0.25))]
    assert best_evaluation(history, "acc")["step"] == 2
