"""The quality benchmarks: the harness on fake run records (resumability, mean/std, averages, table rendering)
and the analysis scripts' helpers (sigma, update sizes)."""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import common
import numpy as np
import pytest
from quality import harness, summary
from quality.harness import Run
from quality.sigma import sigma_rows
from quality.summary import Stat
from quality.update_norms import relative_updates, target_weights
from tiny_models import tiny_bert


def fake_record(task: str, method: str, seed: int, best: float, final: float | None = None) -> dict:
    metrics = lambda v: {"metrics": {"accuracy": v, "f1": v / 2}}  # noqa: E731
    return {"table": "t", "id": f"{task}-{method}-s{seed}", "labels": {"task": task, "method": method, "seed": seed},
            "command": "python benchmarks/quality/t.py",
            "run": {"main_metric": "accuracy", "best": metrics(best), "final": metrics(final or best),
                    "trainable_parameters": 10, "wall_time_seconds": 1.0, "device": "cpu",
                    "config": {"seed": seed, "lr": 0.1}},
            "machine": {"date": f"2025-01-0{seed + 1} 00:00:00", "cpu": "x", "cores": 2, "torch_threads": 1,
                        "python": "3.11", "versions": {"torch": "2"}}}


def write_record(results: Path, record: dict, table: str = "t") -> None:
    path = harness.record_path(results, table, record["id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def test_pending_skips_finished_runs_and_keeps_order(tmp_path):
    runs = [Run(f"r{i}", {"seed": i}) for i in range(4)]
    write_record(tmp_path, {**fake_record("a", "m", 1, 0.5), "id": "r1"})
    write_record(tmp_path, {**fake_record("a", "m", 3, 0.5), "id": "r3"})
    assert [run.id for run in harness.pending(runs, tmp_path, "t")] == ["r0", "r2"]


def test_a_record_of_other_settings_is_stale(tmp_path):
    write_record(tmp_path, {**fake_record("a", "m", 0, 0.5), "id": "r0"})  # trained with lr 0.1
    assert harness.pending([Run("r0", {"seed": 0, "lr": 0.1})], tmp_path, "t") == []
    assert [r.id for r in harness.pending([Run("r0", {"seed": 0, "lr": 0.2})], tmp_path, "t")] == ["r0"]
    assert [r.id for r in harness.pending([Run("r0", {"seed": 0, "r": 4})], tmp_path, "t")] == ["r0"]


def test_pending_refuses_duplicate_ids(tmp_path):
    with pytest.raises(ValueError, match="more than once: r0"):
        harness.pending([Run("r0", {}), Run("r0", {"seed": 1})], tmp_path, "t")


def test_records_store_paths_relative_to_the_repository():
    root = Path("/home/me/kasa-peft")
    record = {"output_dir": "/home/me/kasa-peft/runs/quality/t/r0/output",
              "run": {"config": {"data_dir": "/home/me/shared/data", "lr": 0.1}, "resumed_from": None},
              "command": 'worker.py {"record": "/home/me/kasa-peft/benchmarks/results/quality/t/runs/r0.json"}',
              "labels": ["/elsewhere/file"]}
    assert common.repository_relative(record, root) == {
        "output_dir": "runs/quality/t/r0/output",
        "run": {"config": {"data_dir": "../shared/data", "lr": 0.1}, "resumed_from": None},
        "command": 'worker.py {"record": "benchmarks/results/quality/t/runs/r0.json"}',
        "labels": ["/elsewhere/file"]}


def test_worker_command_resumes_a_started_run_and_clears_others(tmp_path):
    dirs = {name: tmp_path / "t" / name for name in ("started", "stillborn", "other_settings")}
    for name, config in [("started", {"seed": 3, "lr": 0.1}), ("other_settings", {"seed": 4})]:
        (dirs[name] / "output").mkdir(parents=True)
        (dirs[name] / "output" / "run_config.json").write_text(json.dumps(config))
    dirs["stillborn"].mkdir()
    (dirs["stillborn"] / "log.txt").write_text("crashed while loading")
    data = tmp_path / "data"

    def job(name: str) -> dict:
        return json.loads(harness.worker_command(Run(name, {"seed": 3}), tmp_path, tmp_path / "x.json", "t", data)[-1])

    assert job("started")["settings"] == {"seed": 3, "data_dir": str(data),
                                          "output_dir": str(dirs["started"] / "output"), "resume": True}
    for name in ("stillborn", "other_settings"):
        assert job(name)["settings"]["resume"] is False and not dirs[name].exists()


def test_a_run_scored_again_evaluates_the_adapter_of_the_run_that_trains_it(tmp_path):
    source = Run("e2e-lora-s0", {"task": "e2e", "seed": 0, "num_beams": 4}, {"method": "lora"})
    run = harness.scored_again(source, "e2e", "e2e-full-lora-s0", {"num_beams": 1, "max_eval_samples": None})
    assert run.settings == {"task": "e2e", "seed": 0, "num_beams": 1, "max_eval_samples": None}
    assert run.labels == source.labels
    job = json.loads(harness.worker_command(run, tmp_path, tmp_path / "r.json", "e2e_full", tmp_path)[-1])
    assert job["settings"]["output_dir"] == str(tmp_path / "e2e_full" / "e2e-full-lora-s0" / "output")
    assert job["trained_by"] == {"id": "e2e/e2e-lora-s0", "settings": {
        **source.settings, "data_dir": str(tmp_path), "output_dir": str(tmp_path / "e2e" / "e2e-lora-s0" / "output"),
        "resume": False}}
    with pytest.raises(ValueError, match="lr would change how e2e-lora-s0 trains"):
        harness.scored_again(source, "e2e", "x", {"lr": 1.0, "num_beams": 1})


def test_execute_trains_only_missing_runs_and_reports_failures(tmp_path, monkeypatch):
    worker = tmp_path / "worker.py"
    worker.write_text("import json, sys, pathlib\njob = json.loads(sys.argv[1])\n"
                      "record = {'id': job['id'], 'run': {'config': job['settings']}}\n"
                      "sys.exit(3) if job['settings']['seed'] == 2 else "
                      "pathlib.Path(job['record']).write_text(json.dumps(record))\n")
    monkeypatch.setattr(harness, "WORKER", worker)
    runs = [Run(f"r{i}", {"seed": i}) for i in range(3)]
    write_record(tmp_path, {**fake_record("a", "m", 0, 0.5), "id": "r0"})
    failed = harness.execute(runs, "t", tmp_path, tmp_path / "work", jobs=2, threads=1)
    assert failed == ["r2"]
    records = harness.load_records(tmp_path, "t", runs)
    assert [r["id"] for r in records] == ["r0", "r1"]
    assert records[0]["labels"]["task"] == "a"  # the finished run was not redone


def test_stat_is_mean_and_sample_std():
    values = [0.2, 0.5, 0.9]
    mean = sum(values) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    stat = Stat.of(values)
    assert (stat.mean, stat.n) == (pytest.approx(mean), 3) and stat.std == pytest.approx(std)
    assert Stat.of([4.0]) == Stat(4.0, 0.0, 1)
    assert Stat(71.234, 1.25, 3).format() == "71.2 ± 1.2"
    assert Stat(71.234, 0.0, 1).format(2) == "71.23"
    assert Stat(0.5, 0.25, 3).format(2, sign="+") == "+0.50 ± 0.25"


def test_cells_aggregate_seeds_per_row_and_column_in_percent():
    records = [fake_record("a", "kasa", s, v) for s, v in enumerate([0.6, 0.7, 0.8])]
    records += [fake_record("b", "kasa", 0, 0.3, final=0.1), fake_record("a", "lora", 0, 0.65)]
    stats = summary.cells(records, "method", "task", summary.metric)
    assert stats[("kasa", "a")].mean == pytest.approx(70.0)
    assert stats[("kasa", "a")].std == pytest.approx(10.0)
    assert stats[("kasa", "b")] == Stat(30.0, 0.0, 1)
    final = summary.cells(records, "method", "task", lambda r: summary.metric(r, "final", "f1"))
    assert final[("kasa", "b")].mean == pytest.approx(5.0)


def test_row_average_uses_only_seeds_with_every_column():
    records = [fake_record("a", "kasa", 0, 0.6), fake_record("b", "kasa", 0, 0.8),
               fake_record("a", "kasa", 1, 0.7), fake_record("b", "kasa", 1, 0.9),
               fake_record("a", "kasa", 2, 0.1),  # seed 2 lacks task b: left out
               fake_record("a", "lora", 0, 0.5)]  # lora has no complete seed: no average
    averages = summary.row_average(records, "method", "task", ["a", "b"], "seed", summary.metric)
    assert set(averages) == {"kasa"}
    assert averages["kasa"].mean == pytest.approx(statistics.fmean([70.0, 80.0]))
    assert averages["kasa"].std == pytest.approx(statistics.stdev([70.0, 80.0]))


def test_stat_table_marks_missing_cells_and_best_means():
    stats = {("kasa", "a"): Stat(70.0, 1.0, 3), ("lora", "a"): Stat(72.0, 0.5, 3), ("kasa", "b"): Stat(50.0, 0.0, 1)}
    text = summary.stat_table(stats, ["kasa", "lora"], ["a", "b"], "method", extra={"params": {"kasa": "10"}})
    assert text.splitlines() == [
        "| method | a | b | params |",
        "|---|---|---|---|",
        "| kasa | 70.0 ± 1.0 | **50.0** | 10 |",
        "| lora | **72.0 ± 0.5** | — | — |",
    ]


def test_beaten_by_names_the_rows_above_the_reference():
    stats = {("kasa", "a"): Stat(70.0, 0, 1), ("lora", "a"): Stat(72.0, 0, 1), ("pissa", "a"): Stat(69.0, 0, 1),
             ("lora", "b"): Stat(1.0, 0, 1)}
    assert summary.beaten_by(stats, "kasa", ["kasa", "lora", "pissa"], ["a", "b"]) == {"a": ["lora"], "b": []}


def test_matched_ratio_is_the_median_over_runs_of_the_same_task_and_seed_on_the_same_machine():
    times = {("a", "lora", 0): 10.0, ("a", "kasa", 0): 12.0, ("a", "lora", 1): 10.0, ("a", "kasa", 1): 15.0,
             ("b", "lora", 0): 20.0, ("b", "kasa", 0): 22.0, ("b", "kasa", 1): 99.0}  # b-kasa-s1 has no LoRA run
    records = [fake_record(task, method, seed, 0.5) for task, method, seed in times]
    for record, wall in zip(records, times.values(), strict=True):
        record["run"]["wall_time_seconds"] = wall
    ratios = summary.matched_ratio(records, "method", "lora", ("task", "seed"), lambda r: r["run"]["wall_time_seconds"])
    assert ratios == {"lora": 1.0, "kasa": pytest.approx(statistics.median([1.2, 1.5, 1.1]))}
    records[1]["machine"]["cpu"] = "another"  # a-kasa-s0: its LoRA run was on another machine
    ratios = summary.matched_ratio(records, "method", "lora", ("task", "seed"), lambda r: r["run"]["wall_time_seconds"])
    assert ratios["kasa"] == pytest.approx(statistics.median([1.5, 1.1]))


def test_concurrency_reads_the_jobs_of_each_command():
    records = [fake_record("a", "lora", seed, 0.5) for seed in range(3)]
    records[1]["command"] += " --jobs 3"
    records[2]["command"] += " --jobs=1 --threads 1"
    assert summary.concurrency(records) == "1 / 2 / 3"  # the first command has the default, 2


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    stats = {(m, x): Stat(60.0 + i + x, 1.0, 3) for i, m in enumerate(["kasa", "lora"]) for x in (1, 2, 4)}
    assert summary.bar_plot(stats, ["kasa", "lora"], [1, 2, 4], tmp_path / "bar.png", "t", "y").stat().st_size > 0
    assert summary.line_plot(stats, ["kasa", "lora"], [1, 2, 4], tmp_path / "l.png", "t", "r", "y").stat().st_size > 0


def test_ablation_steps_change_only_their_part_of_the_glue_kasa_run():
    from quality import ablation, glue

    runs = {run.labels["variant"]: run.settings for run in ablation.runs()
            if run.labels["task"] == "mrpc" and run.labels["seed"] == 1}
    full = glue.settings("mrpc", "kasa", 1)
    changed = {variant: {k: v for k, v in settings.items() if full.get(k) != v} for variant, settings in runs.items()}
    assert changed == {"truncation + LoRA": {"learn_sigma": False, "beta": 0.0, "gamma": 0.0},
                       "+ learned sigma": {"beta": 0.0, "gamma": 0.0}, "+ L2": {"gamma": 0.0},
                       ablation.REFERENCE: {"regularizer": "reference"}, ablation.SUMMED: {"reduction": "sum"}}
    assert full["beta"] > 0 and full["gamma"] > 0


def test_reused_runs_are_the_glue_runs_with_the_same_settings(tmp_path, monkeypatch):
    from quality import ablation, glue, rank_sweep

    r = rank_sweep.REUSED_RANK
    assert glue.settings(rank_sweep.TASK, "lora", 0, r=r, alpha=2.0 * r) == glue.settings(rank_sweep.TASK, "lora", 0)
    for task, method in [("mrpc", "kasa"), ("mrpc", "lora"), ("sst2", "kasa"), ("stsb", "kasa"), ("rte", "kasa")]:
        record = {**fake_record(task, method, 0, 0.5), "id": f"{task}-{method}-s0"}
        stale = {"lr": 1.0} if task == "rte" else {}  # trained with settings the table no longer has
        record["run"]["config"] = glue.settings(task, method, 0, **stale)
        path = harness.record_path(tmp_path, glue.TABLE, record["id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
    assert "stsb" not in ablation.TASKS and "rte" in ablation.TASKS
    assert [(r["id"], r["labels"]["variant"]) for r in ablation.full_kasa_records(tmp_path)] == [
        ("sst2-kasa-s0", ablation.FULL), ("mrpc-kasa-s0", ablation.FULL)]
    monkeypatch.setattr(rank_sweep, "TASK", "mrpc")  # the fake GLUE records above are mrpc's
    assert sorted((r["id"], r["labels"]["r"]) for r in rank_sweep.glue_records(tmp_path)) == [
        ("mrpc-kasa-s0", 8), ("mrpc-lora-s0", 8)]


def test_ablation_compares_full_kasa_on_the_seeds_the_other_steps_have(tmp_path):
    from quality import ablation, glue

    for seed, accuracy in [(0, 0.70), (1, 0.80)]:  # the GLUE table has two kasa seeds of mrpc
        record = {**fake_record("mrpc", "kasa", seed, accuracy), "id": f"mrpc-kasa-s{seed}"}
        record["run"]["config"] = glue.settings("mrpc", "kasa", seed)
        write_record(tmp_path, {**record, "table": glue.TABLE}, glue.TABLE)
    step = fake_record("mrpc", "kasa", 0, 0.60)  # the ablation has seed 0 only
    step["labels"] = {"task": "mrpc", "variant": "+ L2", "seed": 0}
    (tmp_path / ablation.TABLE).mkdir()
    ablation.summarise([step], tmp_path / ablation.TABLE)
    rows = (tmp_path / ablation.TABLE / "summary.md").read_text()
    assert f"| {ablation.FULL} | **70.0** |" in rows and "| + L2 | 60.0 |" in rows
    assert "over the seeds each task has (mrpc: 0)" in rows


def test_main_only_selects_runs_by_id_prefix(tmp_path, capsys):
    runs = [Run(i, {"seed": n}) for n, i in enumerate(["a-1", "a-2", "b-1"])]
    write_record(tmp_path, {**fake_record("a", "m", 1, 0.5), "id": "a-2"})
    argv = ["--list", "--only", "a-", "--results", str(tmp_path)]
    assert harness.main("t", runs, lambda records, out: None, argv) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["a-1"]


def test_update_norms_compares_every_query_and_value_weight_with_the_base():
    model = tiny_bert()
    base = {name: weight.clone() for name, weight in target_weights(model).items()}
    layers = model.config.num_hidden_layers
    assert sorted(base) == sorted(f"bert.encoder.layer.{i}.attention.self.{t}" for i in range(layers)
                                  for t in ("query", "value"))
    moved = {name: 3 * weight if name.endswith("0.attention.self.value") else weight for name, weight in base.items()}
    updates = relative_updates(base, moved)  # ||3W - W|| / ||W|| = 2 for the moved one, 0 elsewhere
    assert sorted(updates) == [0.0] * (2 * layers - 1) + [pytest.approx(2.0)]
    with pytest.raises(ValueError, match="differ"):
        relative_updates(base, dict(list(moved.items())[1:]))


def test_sigma_rows_report_how_far_sigma_moved_from_its_start():
    info = {"layers": {"layer.0.q": {"sigma": [0.5, -2.0]}}}
    [row] = sigma_rows(info, {"layer.0.q": [1.0, -1.0]})
    # mean |sigma| = 1.25, max 2, mean |sigma - sigma_0| = (0.5 + 1) / 2
    assert row == ["layer.0.q", "1.250", "2.000", "0.750", "2.00 0.50"]


def test_paired_differences_subtract_the_reference_run_of_the_same_seed():
    records = [fake_record("a", "lora", 0, 0.50), fake_record("a", "lora", 1, 0.60),
               fake_record("a", "kasa", 0, 0.55), fake_record("a", "kasa", 1, 0.40), fake_record("a", "kasa", 2, 0.9)]
    differences = summary.paired_differences(records, "method", "lora", "seed", lambda r: summary.metric(r))
    assert differences == {"kasa": {0: pytest.approx(5.0), 1: pytest.approx(-20.0)}}  # seed 2 has no lora run
    table = summary.paired_table(differences, ["kasa", "pissa"], [0, 1, 2], "method")
    # mean -7.5, sample std of (5, -20) = 17.68
    assert table.splitlines()[2] == "| kasa | +5.00 | -20.00 | — | -7.50 ± 17.68 |"
    assert "pissa" not in table


def test_the_kasa_variant_rows_are_kasa_with_only_their_options_changed():
    from quality import commonsense, e2e, instruct

    variants = {"kasa-auto": ("kasa", {"drop_rank": "auto"}),
                "kasa-auto-ones": ("kasa", {"drop_rank": "auto", "sigma_init": "ones"}),
                "kasa-auto-4bit": ("kasa", {"drop_rank": "auto", "quantize": "4bit"}),
                "lora-4bit": ("lora", {"quantize": "4bit"})}
    options = {"drop_rank", "sigma_init", "quantize"}
    for module in (e2e, commonsense, instruct):
        settings = {run.labels["method"]: run.settings for run in module.runs() if run.labels["seed"] == 0}
        assert {"kasa-auto", "kasa-auto-ones"} & set(settings)
        for method, (base, changed) in variants.items():
            if method in settings:
                assert settings[method] == {**settings[base], **changed}
        assert all(options.isdisjoint(s) for m, s in settings.items() if m not in variants)
        assert {run.labels["seed"] for run in module.runs()} == {0, 1, 2}


def test_a_table_names_only_the_seeds_it_has_runs_of():
    records = [fake_record("a", "lora", 2, 0.5), fake_record("a", "kasa", 0, 0.5), fake_record("b", "kasa", 2, 0.5)]
    assert summary.seeds_of(records) == "0, 2"


def test_sigma_without_adapters_gives_a_command_that_trains_them(tmp_path, capsys):
    """A fresh clone has the GLUE records but not the adapters: `glue.py` alone trains nothing (the committed
    records mark the runs finished), so the command sigma.py prints must be one that would train exactly them."""
    from quality import glue, sigma

    assert sigma.main(work=tmp_path / "work", results=tmp_path / "results") == 1
    command = re.search(r"`python benchmarks/quality/glue.py([^`]*)`", capsys.readouterr().out).group(1).split()
    capsys.readouterr()
    assert harness.main(glue.TABLE, glue.runs(), lambda records, out: None, [*command, "--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == [f"{task}-kasa-s0" for task in sigma.TASKS]


def test_glue_summary_of_a_grid_with_no_complete_task(tmp_path):
    """One retrained run in a fresh --results (what sigma.py's command gives): the summary is written with no
    average instead of failing on an empty mean."""
    from quality import glue

    glue.summarise([fake_record("sst2", "kasa", 0, 0.8)], tmp_path)
    text = (tmp_path / "summary.md").read_text()
    assert "avg (no task with every seed)" in text and "| kasa |" in text


@pytest.mark.parametrize(("table", "answers", "kept"), [("e2e", "e2e_predictions.txt", ".predictions.txt"),
                                                        ("commonsense", "commonsense_predictions.jsonl",
                                                         ".predictions.jsonl")])
def test_the_worker_writes_record_and_predictions_into_a_new_results_directory(tmp_path, monkeypatch, table,
                                                                               answers, kept):
    from quality import worker

    output = tmp_path / "runs" / f"{table}-lora-s0"
    output.mkdir(parents=True)
    (output / answers).write_text("a pub near the river\n")
    record = tmp_path / "results" / table / "runs" / f"{table}-lora-s0.json"  # nothing of it exists yet
    finished = {**fake_record(table, "lora", 0, 0.5), "output_dir": str(output)}
    monkeypatch.setattr(worker, "run_job", lambda job: finished)
    monkeypatch.setattr(sys, "argv", ["worker.py", json.dumps({"record": str(record)})])
    worker.main()
    assert json.loads(record.read_text())["id"] == f"{table}-lora-s0"
    assert record.with_suffix(kept).read_text() == "a pub near the river\n"


def test_commonsense_compares_with_lora_over_the_seeds_that_kept_answers(tmp_path):
    from quality import commonsense

    (tmp_path / "runs").mkdir()

    def run(method: str, seed: int, options: str, generations: str) -> dict:
        """A record whose answers (two of set a, two of set b) are right where ``options`` / ``generations``
        have a 1."""
        answers = [{"set": s, "answer": "a", "option_choice": "a" if o == "1" else "b",
                    "extracted": "a" if g == "1" else ""}
                   for s, o, g in zip("aabb", options, generations, strict=True)]
        record = fake_record("commonsense", method, seed, 0.5)
        (tmp_path / "runs" / f"{record['id']}.predictions.jsonl").write_text(
            "".join(json.dumps(a) + "\n" for a in answers))
        return record

    records = [run("lora", 1, "1100", "1000"), run("kasa-auto", 1, "1110", "0000"),
               run("lora", 2, "0000", "1111"), run("kasa-auto", 2, "0011", "1111"),
               fake_record("commonsense", "pissa", 1, 0.5)]  # recorded without answers: no row
    text = commonsense.example_comparison(records, tmp_path)
    row = next(line for line in text.splitlines() if line.startswith("| kasa-auto |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    # option: set a 0, 0 and 0, 0; set b 1, 0 and 1, 1 -> seed 1 (0 + 1/2) / 2, seed 2 (0 + 1) / 2 -> mean 3/8
    # generation: seed 1 (-1/2 + 0) / 2, seed 2 0 -> mean -1/8
    assert cells[:4] == ["kasa-auto", "1, 2", "4", "+37.5"] and cells[6] == "-12.5"
    for estimate, *intervals in (cells[3:6], cells[6:9]):
        for interval in intervals:
            low, high = map(float, interval.strip("[]").split(","))
            assert low <= float(estimate) <= high
    assert "pissa" not in text


def test_commonsense_average_weighs_the_sets_equally_on_drawn_answers():
    from quality import commonsense

    sets = np.array(["a", "a", "b", "b", "b"])
    difference = commonsense.average_difference(np.array([1.0, 0, 1, 1, 0]), np.array([0.0, 0, 1, 0, 0]), sets)
    assert difference(np.arange(5)) == pytest.approx(100 * (1 / 2 + 1 / 3) / 2)
    assert difference(np.array([0, 0, 2])) == pytest.approx(100 * (1 + 0) / 2)  # repeats count as drawn


def test_instruct_summary_gives_ifeval_as_percentages_and_rouge_l_as_scored(tmp_path):
    from quality import instruct

    records = []
    for seed, (accuracy, rouge) in enumerate([(0.25, 30.0), (0.35, 34.0)]):
        record = fake_record("ifeval", "kasa", seed, 0.0)
        record["run"]["final"]["metrics"] = {**{name: accuracy for name in instruct.IFEVAL_METRICS},
                                             instruct.ROUGE_L: rouge, "budget_hits": 3 + seed}
        records.append(record)
    instruct.summarise(records, tmp_path)
    row = next(line for line in (tmp_path / "summary.md").read_text().splitlines() if line.startswith("| kasa |"))
    # mean and sample std of (25, 35) and of (30, 34); no training loss recorded; budget hits 3 and 4; no answers
    # kept: no uncut score
    assert row == "| kasa |" + " **30.0 ± 7.1** |" * 4 + " **32.0 ± 2.8** | — | 3.5 ± 0.7 | — |"
    assert all(run.settings["instruct_eval_sets"] == ["user_oriented"] for run in instruct.runs())


def test_the_full_e2e_table_scores_the_e2e_tables_adapters_again_and_only_evaluates_differently():
    from quality import e2e, e2e_full

    table = {run.id: run for run in e2e.runs()}
    evaluation = {"max_eval_samples": None, "num_beams": 1, "length_penalty": 1.0}
    for run in e2e_full.runs():
        source = table[run.id.replace("e2e-full-", "e2e-", 1)]
        assert run.trained_by == harness.TrainedBy(e2e.TABLE, source)
        assert run.settings == {**source.settings, **evaluation}


def test_the_4bit_adapters_are_decoded_again_on_the_full_precision_base_and_summarised_beside_the_4bit_decoding(
        tmp_path):
    from quality import e2e, e2e_4bit_on_full_precision as served

    table = {run.id: run for run in e2e.runs()}
    runs = served.runs()
    assert sorted({run.labels["method"] for run in runs}) == ["kasa-auto-4bit", "lora-4bit"] and len(runs) == 6
    for run in runs:
        source = table[run.id.removesuffix(served.ON_FULL_PRECISION)]
        assert run.trained_by == harness.TrainedBy(e2e.TABLE, source) and source.settings["quantize"] == "4bit"
        assert run.settings == {**source.settings, "quantize": None}

    def record(run: Run, bleu: float) -> dict:
        scores = {"BLEU": bleu, "NIST": 5.0, "METEOR": 0.3, "ROUGE_L": 0.6, "CIDEr": 1.5}
        return {**fake_record("e2e", run.labels["method"], run.labels["seed"], 0.0), "id": run.id,
                "labels": run.labels, "run": {"final": {"metrics": scores}, "config": run.settings, "device": "cpu"}}

    for run in e2e.runs(served.METHODS)[:2]:  # seed 0 of both rows, decoded on the 4-bit base
        write_record(tmp_path, record(run, 0.40), e2e.TABLE)
    (tmp_path / served.TABLE).mkdir()
    served.summarise([record(run, 0.50) for run in runs[:2]], tmp_path / served.TABLE)
    text = (tmp_path / served.TABLE / "summary.md").read_text()
    on_4bit, on_full = text.split("Decoded on the 4-bit base, seeds 0:")[1].split("Decoded on the full-precision")
    assert "| kasa-auto-4bit | **40.00** |" in on_4bit and "| kasa-auto-4bit | **50.00** |" in on_full


def test_the_worker_scores_a_trained_adapter_again_with_its_own_evaluation(tmp_path, monkeypatch):
    """The record is the source run's training with this run's config and its one evaluation; a source that has
    not run is trained first, and one that chose its adapter among several evaluations is refused."""
    from quality import e2e, e2e_full, worker

    run = e2e_full.runs()[0]
    source_dir, output = tmp_path / "e2e" / "output", tmp_path / "e2e_full" / "output"
    final = {"step": 100, "epoch": 1.0, "metrics": {"BLEU": 0.4}}
    training = {"train_loss": 1.8, "final": final, "best": final, "evaluations": [final], "source": "abc"}
    trained, evaluated = [], []
    monkeypatch.setattr(worker, "train", lambda config: trained.append(config) or SimpleNamespace(record=training))
    monkeypatch.setattr(worker, "evaluate", lambda config, adapter, out: evaluated.append((config, adapter, out))
                        or {"BLEU": 0.5})
    monkeypatch.setattr(worker, "build_pipeline", lambda config: SimpleNamespace(
        evaluation_switches=lambda: {"beams": str(config.num_beams)}))
    clock = iter([10.0, 17.5])
    monkeypatch.setattr(worker, "perf_counter", lambda: next(clock))
    job = {"settings": {**run.settings, "output_dir": str(output)}, "table": "e2e_full", "id": run.id,
           "labels": run.labels, "command": "c",
           "trained_by": {"id": "e2e/" + run.trained_by.run.id,
                          "settings": {**run.trained_by.run.settings, "output_dir": str(source_dir)}}}
    record = worker.run_job(job)["run"]
    (config,), ((scored, adapter, out),) = trained, evaluated
    assert (config.num_beams, config.max_eval_samples, config.output_dir) == (e2e.BEAMS, e2e.TEST_MRS, str(source_dir))
    assert (scored.num_beams, scored.max_eval_samples, adapter, out) == (1, None, str(source_dir), output)
    again = {"step": 100, "epoch": 1.0, "metrics": {"BLEU": 0.5}}
    assert record["final"] == record["best"] == again and record["evaluations"] == [again]
    assert record["train_loss"] == 1.8 and record["config"]["num_beams"] == 1
    assert record["evaluation_wall_time_seconds"] == 7.5  # this evaluation's time, between the clock's two reads
    assert record["evaluation"] == {"beams": "1"}  # this evaluation's switches, not the source's
    assert record["trained_by"] == {"run": "e2e/" + run.trained_by.run.id, "source": "abc"}
    assert harness.matches(run.settings, record["config"])

    training["evaluations"] = [final, final]
    with pytest.raises(ValueError, match="among 2 evaluations"):
        worker.run_job(job)


def test_the_worker_trains_with_the_tasks_defaults_under_the_tables_settings(tmp_path, monkeypatch):
    """As the CLI does: a setting the table leaves out is the task's default, not None (a None decoding budget was
    transformers' 20 tokens, which cut off most E2E sentences; a None n-gram ban kept IFEval off the continuous
    batching decoder its records named)."""
    from quality import e2e, instruct, worker

    trained = []
    monkeypatch.setattr(worker, "train", lambda config: trained.append(config) or SimpleNamespace(record={}))
    for run in (e2e.runs()[0], instruct.runs()[1]):
        worker.run_job({"settings": {**run.settings, "output_dir": str(tmp_path / run.id)}, "table": "t",
                        "id": run.id, "labels": {}, "command": "c"})
    e2e_config, instruct_config = trained
    assert (e2e_config.max_new_tokens, e2e_config.length_penalty, e2e_config.num_beams) == (64, 0.9, e2e.BEAMS)
    assert (instruct_config.no_repeat_ngram_size, instruct_config.length_penalty) == (0, 1.0)
