"""The quality tables take the added baselines (issue 25): valid run settings, per-method settings and rates."""

from __future__ import annotations

from pathlib import Path

import pytest
from quality import baselines_quick, commonsense, e2e, glue, harness

from kasa_peft.pipelines.config import resolve_config
from kasa_peft.training.method_names import BASELINES


@pytest.mark.parametrize("table", [glue, e2e, commonsense, baselines_quick])
def test_every_run_of_a_table_is_a_valid_run_config(table):
    runs = table.runs()
    for run in runs:
        resolve_config({}, {**run.settings, "output_dir": "out"})  # as the worker does: a bad setting raises here
    harness.pending(runs, Path("/nonexistent"), "t")  # ids are unique


def test_the_tables_hold_the_papers_baselines_of_their_family():
    methods = {t: {run.labels["method"] for run in t.runs()} for t in (glue, e2e, commonsense)}
    assert {"bitfit", "adapter-h", "adapter-p", "adapter-d", "dylora", "vera"} <= methods[glue]
    assert {"fft", "ft-top2", "adapter-l", "adapter-h", "prefix"} <= methods[e2e]
    assert {"prefix", "series", "parallel", "dora"} <= methods[commonsense]
    assert set(BASELINES) <= methods[glue] | methods[e2e] | methods[commonsense]  # every added method has a table


def test_existing_rows_keep_their_settings_so_their_records_stay_valid():
    assert harness.with_method({"task": "e2e", "lr": 1e-3}, "lora") == {"task": "e2e", "lr": 1e-3, "method": "lora"}
    assert glue.settings("sst2", "lora", 0)["r"] == 8 and glue.settings("sst2", "vera", 0)["r"] == 256
    assert glue.settings("sst2", "fft", 0)["lr"] == glue.FFT_LR
    assert {r.settings["lr"] for r in e2e.runs() if r.labels["method"] in ("fft", "ft-top2")} == {e2e.FULL_LR}


def test_a_methods_own_learning_rate_is_a_factor_on_the_tables_and_is_reported(monkeypatch):
    monkeypatch.setitem(harness.METHOD_LR_FACTOR, "prefix", 10.0)
    assert {r.settings["lr"] for r in e2e.runs() if r.labels["method"] == "prefix"} == {10 * e2e.SETTINGS["lr"]}
    assert "prefix at 10x" in harness.own_rates(e2e.ROWS) and harness.own_rates(("lora",)) == ""


def test_on_glue_the_factor_moves_the_adapters_rate_and_the_head_keeps_the_tasks(monkeypatch):
    monkeypatch.setitem(harness.METHOD_LR_FACTOR, "vera", 10.0)
    short, long = glue.settings("sst2", "vera", 0), glue.settings("mrpc", "vera", 0)
    assert (short["lr"], short["head_lr"]) == (pytest.approx(10 * glue.SHORT.lr), glue.SHORT.lr)
    assert (long["lr"], long["head_lr"]) == (pytest.approx(10 * glue.LONG.lr), glue.LONG.head_lr)
    assert glue.settings("mrpc", "lora", 0)["lr"] == glue.LONG.lr


def test_a_rate_probe_at_factor_one_is_its_tables_own_run_and_ignores_a_chosen_factor(monkeypatch):
    from quality import lr_sweep

    def probes() -> dict[str, dict]:
        return {run.id: run.settings for run in lr_sweep.method_probes()}

    chosen = probes()
    monkeypatch.setattr(harness, "METHOD_LR_FACTOR", {})  # every method at its table's rate
    assert probes() == chosen  # choosing a factor does not make the probe's own records stale
    table = {run.id: run.settings for run in commonsense.runs()}
    assert chosen["commonsense-prefix-x1-s0"] == table["commonsense-prefix-s0"]
    assert chosen["mrpc-vera-x1-s0"] == glue.settings("mrpc", "vera", 0)
    assert chosen["commonsense-prefix-x30-s0"]["lr"] == pytest.approx(30 * commonsense.SETTINGS["lr"])
