"""The runner after a kill: incomplete checkpoints, a kill before metrics.json, two runs into one directory."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

import kasa_peft.pipelines.run as run_module
from kasa_peft.pipelines.run import train
from kasa_peft.pipelines.run_dir import CHECKPOINTS_DIR, METRICS_FILE
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


# ------------------------------------------------------------------------------- damaged records of a finished run


def cut_off(path: Path) -> None:
    path.write_text(path.read_text()[:32])


def rewrite(path: Path, change) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


RECORD_DAMAGE = {
    "method-without-method": ("kasa_peft_method.json", lambda p: p.write_text('{"r": 8}'),
                              r"kasa_peft_method\.json is damaged: its 'method' is None"),
    "method-cut-off": ("kasa_peft_method.json", cut_off, r"kasa_peft_method\.json is damaged or cut off"),
    "metrics-cut-off": (METRICS_FILE, cut_off, r"metrics\.json is damaged or cut off \(Unterminated string"),
    "metrics-a-list": (METRICS_FILE, lambda p: p.write_text("[]"), r"metrics\.json is damaged: it holds a JSON list"),
    "labels-not-names": (METRICS_FILE, lambda p: rewrite(p, lambda r: {**r, "label_names": "neg"}),
                         r"metrics\.json is damaged: it needs a 'config' mapping and 'label_names'"),
    "config-boolean-rank": (METRICS_FILE, lambda p: rewrite(p, lambda r: {**r, "config": {**r["config"], "r": True}}),
                            r"setting 'r' must be an integer, got True \(.*metrics\.json"),
    "fewer-labels": (METRICS_FILE, lambda p: rewrite(p, lambda r: {**r, "label_names": r["label_names"][:2]}),
                     r"metrics\.json names 2 classes but the adapter's classification head has 3 outputs"),
}


@pytest.mark.parametrize("damage", RECORD_DAMAGE, ids=list(RECORD_DAMAGE))
def test_a_damaged_record_of_a_finished_run_is_one_error_naming_it(config, cli, capsys, damage):  # noqa: F811
    name, damage_file, message = RECORD_DAMAGE[damage]
    run = train(config("a", max_steps=1)).output_dir
    damage_file(run / name)
    capsys.readouterr()
    commands = {"eval": ["eval", "--run", run], "export": ["export", run, "--format", "lora", "--out", run / "lora"],
                "predict": ["predict", "--model", config("x").model, "--adapter", run, "--text", "the movie was good"]}
    needs = {"kasa_peft_method.json": ["eval"], METRICS_FILE: ["eval", "export", "predict"]}[name]
    if damage == "fewer-labels":
        needs = ["export", "predict"]
    for command in needs:
        result = cli(*commands[command])
        lines = result.err.strip().splitlines()
        assert result.code == 1 and len(lines) == 1 and lines[0].startswith("kasa-peft: error: "), (command, result.err)
        assert str(run / name) in lines[0] and re.search(message, lines[0]), (command, lines[0])
    assert not (run / "lora").exists()


# ------------------------------------------------------------------------------------------------ a full disk

WITH_FILE_SIZE_LIMIT = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({0}, {0})); "
                        "from kasa_peft.cli import main; sys.exit(main(sys.argv[1:]))")


def cli_with_file_size_limit(limit: int, *args) -> subprocess.CompletedProcess:
    """``kasa-peft ARGS`` in a process that may write no file larger than ``limit`` bytes (``ulimit -f``)."""
    return subprocess.run([sys.executable, "-c", WITH_FILE_SIZE_LIMIT.format(limit), *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_a_file_size_limit_during_training_names_the_file_and_leaves_no_partial_checkpoint(config):  # noqa: F811
    run = config("limited", max_steps=3)
    args = ["train", "--task", "classify", "--model", run.model, "--output-dir", run.output_dir, "--train-file",
            run.train_file, "--eval-file", run.eval_file, "--text-columns", "review", "--label-column", "label",
            "--max-length", 64, "--batch-size", 4, "--max-steps", 3, "--save-steps", 2]
    result = cli_with_file_size_limit(25_000, *args)  # the adapter (21 kB) fits, the optimizer state (30 kB) not
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    checkpoint = Path(run.output_dir) / CHECKPOINTS_DIR / "checkpoint-2"
    errors = [line.split("kasa-peft: error: ", 1)[1] for line in result.stderr.splitlines()
              if "kasa-peft: error: " in line]
    assert len(errors) == 1 and errors[0].startswith(
        f"no space left on the device / file too large while writing {checkpoint} (basic_ios"), errors
    assert "free disk space (or raise the file-size limit, ulimit -f)" in result.stderr
    assert not checkpoint.exists() and not (Path(run.output_dir) / METRICS_FILE).exists()


def test_a_full_disk_while_writing_a_record_names_it_and_keeps_the_old_one(tmp_path, monkeypatch):
    import errno

    from kasa_peft.core.files import write_text_atomically

    record = tmp_path / "metrics.json"
    write_text_atomically(record, "old")

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError, match=rf"no space left on the device / file too large while writing {record} "):
        write_text_atomically(record, "new")
    monkeypatch.undo()
    assert record.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


# ------------------------------------------------------------------------------- pickles where tensors belong


class Payload:
    """A pickle that would create ``marker`` when unpickled (weights-only loading must never run it)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def write_payload(path: Path) -> Path:
    marker = path.parent.parent.parent / "payload-ran"
    torch.save({"state": Payload(marker)}, path)
    return marker


@pytest.mark.parametrize("name", ["rng_state.pth", "optimizer.pt", "scheduler.pt"])
def test_resume_names_a_checkpoint_file_that_is_not_plain_tensors(config, cli, capsys, name):  # noqa: F811
    interrupted = config("b")
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, callbacks=[Interrupt(at_step=3)])
    checkpoint = Path(interrupted.output_dir) / CHECKPOINTS_DIR / "checkpoint-2"
    marker = write_payload(checkpoint / name)
    with pytest.raises(ValueError, match=rf"{checkpoint / name} is not a file of tensors that loads safely .*delete "
                                         rf"{checkpoint} to resume from the checkpoint before it"):
        train(interrupted.replace(resume=True))
    assert not marker.exists()


def test_a_baseline_run_with_a_pickled_adapter_is_named(config, cli, capsys):  # noqa: F811
    run = train(config("lora", method="lora", max_steps=1)).output_dir
    (run / "adapter_model.safetensors").unlink()
    marker = write_payload(run / "adapter_model.bin")
    capsys.readouterr()
    result = cli("eval", "--run", run)
    lines = result.err.strip().splitlines()
    assert result.code == 1 and lines[-1].startswith(f"kasa-peft: error: {run / 'adapter_model.bin'} is not a file of "
                                                     "tensors that loads safely"), result.err
    assert "Traceback" not in result.err and not marker.exists()


def test_a_model_directory_with_a_pickled_weights_file_is_named(bert_dir, cli, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(bert_dir, model)
    for weights in model.glob("*.safetensors"):
        weights.unlink()
    marker = write_payload(model / "pytorch_model.bin")
    result = cli("predict", "--model", model, "--text", "the movie was good")
    lines = result.err.strip().splitlines()
    assert result.code == 1 and lines[-1].startswith(f"kasa-peft: error: {model / 'pytorch_model.bin'} is not a file "
                                                     "of tensors that loads safely"), result.err
    assert "Traceback" not in result.err and not marker.exists()


# ------------------------------------------------------------------------- a resumed run is the same run


def flip_labels(path: Path) -> None:
    swap = {"neg": "pos", "pos": "neg"}
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], *(f"{text},{swap.get(label, label)}" for text, label in
                                           (line.rsplit(",", 1) for line in lines[1:]))]) + "\n")


def test_resume_refuses_training_data_that_changed_since_the_run_started(config):  # noqa: F811
    interrupted = config("b")
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, callbacks=[Interrupt(at_step=3)])
    recorded = json.loads((Path(interrupted.output_dir) / "run_inputs.json").read_text())
    flip_labels(Path(interrupted.train_file))
    with pytest.raises(ValueError, match=r"--resume: the training data \(.*\) differ from what the run in .* started "
                                         r"with .*run_inputs\.json records other sha256"):
        train(interrupted.replace(resume=True))
    flip_labels(Path(interrupted.train_file))  # back as it was: the run resumes and records what it trained on
    resumed = train(interrupted.replace(resume=True))
    assert resumed.record["inputs"] == recorded and resumed.record["optimizer_steps"] == 5


def test_resume_refuses_base_weights_that_changed_since_the_run_started(config, tmp_path):  # noqa: F811
    import shutil

    from transformers import AutoModel

    model_dir = tmp_path / "base"
    shutil.copytree(config("x").model, model_dir)
    interrupted = config("b", model=str(model_dir))
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, callbacks=[Interrupt(at_step=3)])
    base = AutoModel.from_pretrained(model_dir)
    with torch.no_grad():
        base.embeddings.word_embeddings.weight[0, 0] += 1e-3  # one number of one weight
    base.save_pretrained(model_dir)
    with pytest.raises(ValueError, match=r"--resume: the base model's weights \(--model\) differ from what the run"):
        train(interrupted.replace(resume=True))
