"""RunConfig: task defaults < config file < command line; conversion and validation of settings."""

from __future__ import annotations

import json

import pytest

from kasa_peft.pipelines.config import TASK_DEFAULTS, RunConfig, read_config_file, required, resolve_config
from kasa_peft.pipelines.task_names import parse_task, task_choices


def test_task_defaults_then_file_then_command_line(tmp_path):
    path = tmp_path / "cola.yaml"
    path.write_text("task: glue:cola\nmodel: minilm\nlr: 4e-4\nbatch-size: 16\nepochs: 5\n"
                    "target_modules: [query, value]\n")
    config = resolve_config(read_config_file(path), {"batch_size": 8, "model": "other"})
    assert config.lr == 4e-4 and isinstance(config.lr, float)  # YAML 1.1 reads 4e-4 as a string
    assert (config.batch_size, config.epochs, config.model) == (8, 5.0, "other")
    assert config.target_modules == ["query", "value"]
    assert config.max_length == TASK_DEFAULTS["glue"]["max_length"]
    assert config.eval_every_epoch is True


def test_family_defaults_differ_per_task():
    e2e = resolve_config({}, {"task": "e2e", "model": "m"})
    assert (e2e.num_beams, e2e.length_penalty, e2e.no_repeat_ngram_size) == (10, 0.9, 4)
    sft = resolve_config({}, {"task": "sft", "model": "m"})
    assert sft.use_chat_template is None and sft.instruct_eval_sets == ["user_oriented", "seed"]


def test_json_config_and_comma_separated_lists(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"task": "classify", "model": "m", "text_columns": "a, b", "resume": "yes"}))
    config = resolve_config(read_config_file(path), {})
    assert config.text_columns == ["a", "b"] and config.resume is True


@pytest.mark.parametrize(("values", "message"), [
    ({"task": "glue:cola", "model": "m", "learning_rate": 1}, "unknown setting 'learning_rate'"),
    ({"task": "glue:cola", "model": "m", "r": "eight"}, "'r' must be an integer"),
    ({"task": "glue:cola", "model": "m", "r": 2.5}, "'r' must be an integer"),
    ({"task": "glue:cola", "model": "m", "resume": "maybe"}, "'resume' must be true or false"),
    ({"task": "glue:cola", "model": "m", "r": 0}, "--r must be positive"),
    ({"task": "glue:cola", "model": "m", "lr": "inf"}, "--lr must be a finite number, got inf"),
    ({"task": "glue:cola", "model": "m", "beta": "inf"}, "--beta must be a finite number, got inf"),
    ({"task": "glue:cola", "model": "m", "gamma": float("nan")}, "--gamma must be a finite number, got nan"),
    ({"task": "e2e", "model": "m", "length_penalty": "-inf"}, "--length-penalty must be a finite number"),
    ({"task": "glue:cola", "model": "m", "dropout": 1.0}, "--dropout"),
    ({"task": "glue:cola", "model": "m", "method": "qlora"}, "unknown method 'qlora'"),
    ({"task": "glue:colaa", "model": "m"}, "unknown task 'glue:colaa'"),
    ({"model": "m"}, "missing --task"),
])
def test_bad_settings_are_named(values, message):
    with pytest.raises(ValueError, match=message):
        resolve_config({}, values)


def test_config_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--config"):
        read_config_file(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="mapping"):
        read_config_file(tmp_path / "list.yaml")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_config_file(tmp_path / "broken.json")
    (tmp_path / "latin1.yaml").write_bytes(b"model: caf\xe9\n")
    with pytest.raises(ValueError, match=r"latin1\.yaml is not UTF-8 text \(byte 0xe9 at byte 10\)"):
        read_config_file(tmp_path / "latin1.yaml")


def test_task_names():
    assert parse_task("glue:stsb") == ("glue", "stsb") and parse_task("sft") == ("sft", None)
    assert parse_task("commonsense:all").member == "all"
    assert "commonsense:ARC-Easy" in task_choices() and "e2e" in task_choices()
    for bad in ("glue", "e2e:x", "sft:", "nli"):
        with pytest.raises(ValueError, match="unknown task"):
            parse_task(bad)


def test_every_task_family_has_defaults():
    families = {parse_task(name).family for name in task_choices()}
    assert families == set(TASK_DEFAULTS)
    for family in families:
        RunConfig(task=next(n for n in task_choices() if n.startswith(family)), model="m", **TASK_DEFAULTS[family])


@pytest.mark.parametrize("line, setting, kind", [
    ("lr: yes", "lr", "a number"), ("r: on", "r", "an integer"), ("epochs: true", "epochs", "a number"),
    ("max-steps: off", "max-steps", "an integer"), ("dropout: no", "dropout", "a number"),
    ("output_dir: no", "output-dir", "a string"), ("drop-rank: yes", "drop-rank", "a string"),
    ("target_modules: true", "target-modules", "a list or a comma-separated string"),
    ("model: [a, b]", "model", "a string"),
])
def test_yaml_booleans_never_become_numbers_names_or_paths(tmp_path, line, setting, kind):
    """YAML 1.1 reads yes/on/true as True, which Python would take for 1 (lr = 1.0, r = 1, epochs = 1.0)."""
    path = tmp_path / "run.yaml"
    path.write_text(f"task: classify\nmodel: m\n{line}\n")
    with pytest.raises(ValueError, match=rf"setting '{setting}' must be {kind}, got .*config file {path}"):
        resolve_config(read_config_file(path), {})


@pytest.mark.parametrize("field", ["r", "lr", "epochs", "batch_size", "seed", "alpha"])
def test_a_boolean_for_a_numeric_setting_is_refused_from_python_too(field):
    with pytest.raises(ValueError, match=rf"--{field.replace('_', '-')} must be (an integer|a number), got True"):
        RunConfig(task="classify", model="m", **{field: True})


def test_null_over_a_task_default_is_refused_with_the_default_named(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("task: e2e\nmodel: m\nlr: null\nnum_beams:\n")
    with pytest.raises(ValueError, match=r"lr, num-beams set to null: e2e tasks need a value; .* \(0\.0002, 10\)"):
        resolve_config(read_config_file(path), {})
    assert resolve_config({"task": "e2e", "model": "m", "max_steps": None}, {}).max_steps is None  # no default


def test_a_setting_a_run_needs_is_checked_where_it_is_used():
    by_hand = RunConfig(task="sft", model="m")  # no task defaults: no batch size
    assert required(resolve_config({}, {"task": "sft", "model": "m"}).batch_size, "batch_size") == 8
    with pytest.raises(ValueError, match="--batch-size is not set: give it, or build the config with resolve_config"):
        required(by_hand.batch_size, "batch_size")


def test_quantize_takes_its_two_names_from_a_file_or_the_command_line():
    assert resolve_config({"task": "sft", "model": "m", "quantize": "4bit"}, {}).quantize == "4bit"
    with pytest.raises(ValueError, match="--quantize must be one of 4bit, 8bit, got '2bit'"):
        resolve_config({"task": "sft", "model": "m"}, {"quantize": "2bit"})
