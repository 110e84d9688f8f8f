"""The runner after a kill: incomplete checkpoints, a kill before metrics.json, two runs into one directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

import kasa_peft.pipelines.run as run_module
from kasa_peft.pipelines.run import CHECKPOINTS_DIR, METRICS_FILE, train
from kasa_peft.pipelines.run_lock import RunDirectoryBusy, lock_path
from kasa_peft.training.trainer import NonFiniteLossError

from .test_run import Interrupt, config  # noqa: F401  (config is a fixture)


def cut_off_state(checkpoint: Path) -> None:
    state = checkpoint / "trainer_state.json"
    state.write_text(state.read_text()[:40])


def no_state_and_empty_optimizer(checkpoint: Path) -> None:
    (checkpoint / "trainer_state.json").unlink()
    (checkpoint / "optimizer.pt").write_bytes(b"")


@pytest.mark.parametrize("kill, reason", [(no_state_and_empty_optimizer, "it has no trainer_state.json"),
                                          (cut_off_state, "its trainer_state.json is cut off")])
def test_resume_skips_a_checkpoint_killed_while_being_written(config, kill, reason):  # noqa: F811
    interrupted = config("b")
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, callbacks=[Interrupt(at_step=5)])  # checkpoints 2 and 4 written
    kill(Path(interrupted.output_dir) / CHECKPOINTS_DIR / "checkpoint-4")
    with pytest.warns(UserWarning, match=rf"skipping .*checkpoint-4: {reason}"):
        resumed = train(interrupted.replace(resume=True))
    assert resumed.record["resumed_from"].endswith("checkpoint-2")
    assert resumed.record["optimizer_steps"] == 5


@pytest.mark.parametrize("kill_at", ["final evaluation", "metrics.json"])
def test_a_run_killed_after_training_is_finished_as_that_run(config, monkeypatch, kill_at):  # noqa: F811
    """Killed after the last step: during the final evaluation, or between the adapter and metrics.json."""
    uninterrupted = train(config("a"))
    killed = config("b")
    real_write, real_evaluations = run_module.write_atomically, run_module.evaluations

    def killed_at_metrics(path: Path, text: str) -> None:
        if path.name == METRICS_FILE:
            raise KeyboardInterrupt
        real_write(path, text)

    def killed_at_evaluation(*args):
        raise KeyboardInterrupt
    if kill_at == "metrics.json":
        monkeypatch.setattr(run_module, "write_atomically", killed_at_metrics)
    else:
        monkeypatch.setattr(run_module, "evaluations", killed_at_evaluation)
    with pytest.raises(KeyboardInterrupt):
        train(killed)
    monkeypatch.setattr(run_module, "write_atomically", real_write)
    monkeypatch.setattr(run_module, "evaluations", real_evaluations)

    resumed = train(killed.replace(resume=True))
    assert resumed.record["optimizer_steps"] == uninterrupted.record["optimizer_steps"] == 5
    assert resumed.record["train_loss"] == pytest.approx(uninterrupted.record["train_loss"], rel=1e-6)
    assert resumed.record["final"]["metrics"] == pytest.approx(uninterrupted.record["final"]["metrics"])
    assert [e["step"] for e in resumed.record["evaluations"]] == [1, 2, 3, 4, 5]
    assert resumed.record["resumed_from"] is None  # the record of the invocation that trained it
    assert json.loads((resumed.output_dir / METRICS_FILE).read_text()) == resumed.record
    expected, actual = (load_file(r.output_dir / "adapter_model.safetensors") for r in (uninterrupted, resumed))
    assert all((expected[k] - actual[k]).abs().max() <= 1e-6 for k in expected)
    assert not (resumed.output_dir / CHECKPOINTS_DIR).exists()


HOLDER = """
import sys, time
from pathlib import Path
from kasa_peft.pipelines.run_lock import run_directory_lock
with run_directory_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_second_run_into_a_busy_directory_is_refused_naming_the_first(config):  # noqa: F811
    busy = config("busy", max_steps=1)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, busy.output_dir], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirectoryBusy, match=rf"busy is in use by a running `kasa-peft train` \(pid "
                                                   rf"{holder.pid}: "):
            train(busy)
        assert not Path(busy.output_dir).exists()
    finally:
        holder.kill()
        holder.wait()
    assert lock_path(Path(busy.output_dir)).exists()  # left by the kill -9, but no longer locked
    assert train(busy).record["optimizer_steps"] == 1
    assert not lock_path(Path(busy.output_dir)).exists()


class Poison(TrainerCallback):
    """Writes NaN into one trainable parameter when step ``at_step`` begins (1-based)."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.at_step:
            with torch.no_grad():
                next(p for n, p in model.named_parameters() if n.endswith("sigma")).fill_(float("nan"))


def test_a_non_finite_loss_stops_training_and_saves_no_adapter(config):  # noqa: F811
    diverging = config("nan")
    with pytest.raises(NonFiniteLossError, match="the training loss became nan at step 3, so training diverged"):
        train(diverging, callbacks=[Poison(at_step=3)])
    out = Path(diverging.output_dir)
    assert not (out / "adapter_model.safetensors").exists() and not (out / METRICS_FILE).exists()
    assert sorted(p.name for p in (out / CHECKPOINTS_DIR).iterdir()) == ["checkpoint-2"]
