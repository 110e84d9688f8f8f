"""Summaries say which code and evaluation produced the runs of a row, and "not recorded" for old records."""

from __future__ import annotations

from quality import summary

A, B = "a" * 40, "b" * 40


def record(method: str, seed: int, source: dict | None = None, evaluation: dict | None = None, **labels) -> dict:
    run = {"device": "cpu"} | ({"source": source} if source is not None else {}) | (
        {"evaluation": evaluation} if evaluation is not None else {})
    return {"id": f"{method}-s{seed}", "labels": {"method": method, "seed": seed, **labels}, "run": run,
            "machine": {"date": "2025-01-01", "cpu": "x", "cores": 2, "torch_threads": 1, "python": "3.11",
                        "versions": {"torch": "2"}}}


def test_a_run_is_named_by_its_commit_dirtiness_and_switches():
    assert summary.provenance(record("lora", 0, {"commit": A, "dirty": False}, {})) == A[:12]
    assert (summary.provenance(record("lora", 0, {"commit": A, "dirty": True}, {"option_scorer": "prompt-cache"}))
            == f"{A[:12]}+dirty, option_scorer prompt-cache")
    assert summary.provenance(record("lora", 0, {"commit": "unknown", "dirty": "unknown"}, {})).startswith(
        "commit unknown")


def test_a_run_scored_again_names_the_commit_that_trained_its_adapter_too():
    scored = record("lora", 0, {"commit": A, "dirty": False}, {"decoder": "generate"})
    scored["run"]["trained_by"] = {"run": "e2e/e2e-lora-s0", "source": {"commit": B, "dirty": True}}
    assert summary.provenance(scored) == f"{A[:12]} (adapter trained at {B[:12]}+dirty), decoder generate"


def test_old_records_say_not_recorded_rather_than_guess():
    assert summary.provenance(record("lora", 0)) == "commit not recorded, evaluation switches not recorded"
    note = summary.code_note([record("lora", 0), record("kasa", 1)])
    assert note == ("Code and evaluation (git commit, switches): commit not recorded, evaluation switches not "
                    "recorded for every run")


def test_a_row_that_mixes_code_versions_lists_them_by_seed():
    records = [record("lora", 0, {"commit": A, "dirty": False}, {}),
               record("lora", 1, {"commit": B, "dirty": False}, {}), record("lora", 2),
               record("kasa", 0, {"commit": A, "dirty": False}, {}),
               record("kasa", 1, {"commit": A, "dirty": False}, {})]
    note = summary.code_note(records)
    assert note.startswith("Code and evaluation (git commit, switches) by row: ")
    rows = note.split(": ", 1)[1].split(" | ")
    assert rows == [f"lora **mixes code versions**: {A[:12]} (seed 0); {B[:12]} (seed 1); commit not recorded, "
                    "evaluation switches not recorded (seed 2)",
                    f"kasa: {A[:12]} (seeds 0, 1)"]


def test_a_row_over_several_columns_names_its_runs():
    records = [record("lora", 0, {"commit": A, "dirty": False}, {}, task="mrpc"),
               record("lora", 0, {"commit": B, "dirty": False}, {}, task="rte")]
    records[1]["id"] = "rte-lora-s0"
    assert summary.code_note(records).endswith(f"lora **mixes code versions**: {A[:12]} (lora-s0); {B[:12]} "
                                               "(rte-lora-s0)")


def test_the_machine_line_carries_the_code_note():
    assert summary.machine_line([record("lora", 0)]).endswith(summary.code_note([record("lora", 0)]))


def test_the_machine_line_names_the_versions_the_run_recorded_over_the_workers_environment():
    """A record read back from a finished run directory: the worker's installed kasa-peft is not the code that
    trained."""
    run = record("lora", 0)
    run["machine"]["versions"] = {"torch": "2", "kasa-peft": "0.9"}
    run["run"]["versions"] = {"kasa-peft": "0.8", "python": "3.11"}
    assert "torch 2, kasa-peft 0.8;" in summary.machine_line([run])


def test_runs_on_different_machines_or_packages_are_each_named_with_their_count():
    old, new, newer = record("lora", 0), record("lora", 1), record("kasa", 0)
    new["machine"] = {**new["machine"], "date": "2025-02-01", "cpu": "y", "versions": {"torch": "3"}}
    newer["machine"] = {**new["machine"], "date": "2025-03-01"}
    line = summary.machine_line([new, old, newer])
    assert line.startswith("the runs differ in machine or packages: x (2 cores, 1 torch threads per run, shared with "
                           "other work), Python 3.11, torch 2; device cpu (1 run); y (2 cores, 1 torch threads per "
                           "run, shared with other work), Python 3.11, torch 3; device cpu (2 runs). ")
    assert summary.machine_line([new, newer]).startswith("y (2 cores")  # one machine: no list


def test_records_with_different_labels_are_grouped_by_the_labels_each_has():
    """The learning-rate sweep holds sweep runs (task, lr), probes (task, probe) and method probes (task, method,
    factor): a row is made of the labels a run has."""
    sweep = {"id": "sst2-lora-lr0.01-s0", "labels": {"task": "sst2", "lr": 0.01, "seed": 0},
             "run": {"device": "cpu", "source": {"commit": A, "dirty": False}, "evaluation": {}}}
    probe = {**record("vera", 0, {"commit": B, "dirty": False}, {}, task="mrpc", factor=10.0), "id": "mrpc-vera-x10-s0"}
    rows = summary.code_note([sweep, probe]).split(": ", 1)[1].split(" | ")
    assert rows == [f"0.01, sst2: {A[:12]} (seed 0)", f"10.0, vera, mrpc: {B[:12]} (seed 0)"]  # labels by name
