"""A run's record says which code produced it (git commit, dirty tree) and how its numbers were computed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import kasa_peft
from kasa_peft.pipelines.config import resolve_config
from kasa_peft.pipelines.run import train
from kasa_peft.pipelines.run_dir import METRICS_FILE

from .helpers import write_classification_files


def checkout_state() -> dict:
    """The package checkout's commit and dirtiness, asked of git directly (``unknown`` where it is no checkout)."""
    package = Path(kasa_peft.__file__).parent

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True)
    if shutil.which("git") is None or git("ls-files", "--error-unmatch", "__init__.py").returncode:
        return {"commit": "unknown", "dirty": "unknown"}
    return {"commit": git("rev-parse", "HEAD").stdout.strip(),
            "dirty": git("diff", "HEAD", "--quiet").returncode != 0}


def test_the_record_carries_the_commit_and_the_evaluation_switches(bert_dir, tmp_path):
    train_file, eval_file = write_classification_files(tmp_path, rows=12)
    before = checkout_state()
    config = resolve_config({}, {"task": "classify", "model": bert_dir, "output_dir": str(tmp_path / "run"),
                                 "train_file": str(train_file), "eval_file": str(eval_file),
                                 "text_columns": "review", "label_column": "label", "max_length": 32,
                                 "batch_size": 4, "max_steps": 1})
    result = train(config)
    after = checkout_state()
    written = json.loads((tmp_path / "run" / METRICS_FILE).read_text())
    assert written["source"] == result.record["source"]
    assert written["source"]["commit"] == before["commit"]
    # other work may change the shared tree while the run trains: the record agrees with one of the two looks
    assert written["source"]["dirty"] in (before["dirty"], after["dirty"])
    assert written["evaluation"] == {}  # classification has no switch beyond its settings


def test_commonsense_records_its_option_scorer(cli, llama_dir, data_dir, tmp_path):
    out = tmp_path / "boolq"
    result = cli("train", "--task", "commonsense:boolq", "--model", llama_dir, "--data-dir", data_dir,
                 "--output-dir", out, "--max-train-samples", 4, "--max-eval-samples", 2, "--max-steps", 1,
                 "--batch-size", 4, "--max-length", 64, "--max-new-tokens", 2)
    assert result.code == 0, result.err
    record = json.loads((out / METRICS_FILE).read_text())
    assert record["evaluation"] == {"option_scorer": "prompt-cache"}  # the KV-cache scorer of commit 1a6b858

