"""`kasa-peft train` on 2 ranks (forked CPU processes, gloo), as `torchrun` / `accelerate launch` start it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kasa_peft.pipelines.run_dir import CHECKPOINTS_DIR, METRICS_FILE, RUN_CONFIG_FILE
from kasa_peft.training import load_trained
from kasa_peft import kasa_layers
from tiny_models import tiny_llama
from training.distributed_workers import accelerate_launch_env, cli_worker, launch

from .helpers import write_classification_files

REPO = Path(__file__).resolve().parents[2]


def launched_cli(out: Path, *argv, launch_env: dict[str, str] | None = None) -> None:
    launch(cli_worker, out, [str(a) for a in argv], launch_env)
    assert [(out / f"exit-{rank}.txt").read_text() for rank in (0, 1)] == ["0", "0"]


def assert_one_finished_run(run: Path, steps: int, predictions: str, fsdp: bool) -> dict:
    """The directory of a finished run, written once: metrics, adapter, predictions; no checkpoints left."""
    record = json.loads((run / METRICS_FILE).read_text())
    assert (record["optimizer_steps"], record["processes"], record["fsdp"]) == (steps, 2, fsdp)
    assert json.loads((run / RUN_CONFIG_FILE).read_text())["output_dir"] == str(run)
    assert (run / predictions).is_file() and (run / "adapter_model.safetensors").is_file()
    assert not (run / CHECKPOINTS_DIR).exists() and not list(run.glob(".*tmp*"))
    return record


def test_train_under_torchrun_writes_one_run_from_rank_0(tmp_path, bert_dir):
    """A real `torchrun --standalone --nproc_per_node 2` launch on this CPU-only machine: the ranks form one
    gloo group (each rank alone would see 8 steps an epoch at batch 2, not 4)."""
    train_file, eval_file = write_classification_files(tmp_path, rows=16)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "kasa_peft.cli", "train", "--task", "classify", "--model", bert_dir, "--train-file", train_file,
               "--eval-file", eval_file, "--text-columns", "review", "--label-column", "label", "--batch-size", "2",
               "--max-steps", "4", "--save-steps", "2", "--eval-steps", "2", "--max-length", "32", "--output-dir", out]
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trainable parameters:") == 1  # one summary, from rank 0
    record = assert_one_finished_run(out, 4, "predictions_eval.txt", fsdp=False)
    assert [(e["step"], e["epoch"]) for e in record["evaluations"]] == [(2, 0.5), (4, 1.0)]
    assert len((out / "predictions_eval.txt").read_text().splitlines()) == 8


def test_train_under_accelerate_fsdp2_saves_the_gathered_adapter(tmp_path, llama_dir):
    """With the environment of configs/accelerate/fsdp.yaml (FSDP2 forced onto the CPU group): the decoder
    blocks are sharded, and the adapter written by rank 0 is complete and loads in a single process."""
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in [
        {"instruction": "Name a colour.", "input": "", "output": "Blue."},
        {"prompt": "Say hello.\n", "completion": "Hello!"}] * 4))
    out = tmp_path / "run"
    launched_cli(tmp_path, "train", "--task", "sft", "--model", llama_dir, "--train-file", train_file,
                 "--eval-file", train_file, "--max-steps", 2, "--batch-size", 2, "--max-length", 64,
                 "--max-new-tokens", 4, "--target-modules", "all-linear", "--output-dir", out,
                 launch_env=accelerate_launch_env(REPO / "configs" / "accelerate" / "fsdp.yaml"))
    assert_one_finished_run(out, 2, "sft_generations.jsonl", fsdp=True)
    trained = load_trained(tiny_llama(), out)  # checks every tensor's full shape against the base: no shard loads
    layers = dict(kasa_layers(trained))
    assert len(layers) == 7 * tiny_llama().config.num_hidden_layers
    assert all(layer.adapters["default"].B.abs().max() > 0 for layer in layers.values())  # B starts at zero
