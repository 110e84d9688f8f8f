"""--drop-rank / --drop-budget / --sigma-init and their YAML keys: through `kasa-peft train` to the adapter."""

from __future__ import annotations

import json

import pytest
import torch

from kasa_peft import read_adapter
from kasa_peft.pipelines.config import read_config_file, resolve_config
from kasa_peft.training import MethodSpec

from .helpers import write_classification_files


def test_a_train_run_drops_the_requested_count_and_records_it(cli, bert_dir, tmp_path):
    train_file, eval_file = write_classification_files(tmp_path)
    (tmp_path / "run.yaml").write_text("drop-rank: 3\n")
    out = tmp_path / "run"
    result = cli("train", "--config", tmp_path / "run.yaml", "--task", "classify", "--model", bert_dir,
                 "--output-dir", out, "--train-file", train_file, "--eval-file", eval_file, "--text-columns", "review",
                 "--label-column", "label", "--max-steps", 2, "--batch-size", 4, "--max-length", 64, "--r", 8,
                 "--sigma-init", "ones")
    assert result.code == 0, result.err
    assert json.loads((out / "metrics.json").read_text())["config"]["drop_rank"] == 3
    metadata, tensors = read_adapter(out)
    assert (metadata["config"]["drop_rank"], metadata["config"]["sigma_init"]) == (3, "ones")
    assert all(torch.equal(tensors[f"{name}.sigma_init"], torch.ones(8)) for name in metadata["layers"])
    assert {tensors[f"{name}.dropped_us"].shape[1] for name in metadata["layers"]} == {3}
    assert {tensors[f"{name}.A"].shape[0] for name in metadata["layers"]} == {8}


def test_yaml_and_flags_give_the_same_settings(tmp_path):
    (tmp_path / "auto.yaml").write_text("drop-rank: auto\ndrop-budget: 2.0e-2\n")
    from_file = resolve_config(read_config_file(tmp_path / "auto.yaml"), {"task": "e2e", "model": "m"})
    from_flags = resolve_config({}, {"task": "e2e", "model": "m", "drop_rank": "auto", "drop_budget": "0.02"})
    assert (from_file.drop_rank, from_file.drop_budget) == (from_flags.drop_rank, from_flags.drop_budget) == ("auto",
                                                                                                           0.02)
    assert resolve_config({}, {"task": "e2e", "model": "m", "drop_rank": "0"}).drop_rank == 0


@pytest.mark.parametrize("values, message", [
    ({"drop_rank": "-1"}, "drop_rank must be 'r', 'auto' or an integer >= 0"),
    ({"drop_rank": "auto", "drop_budget": 0}, r"drop_budget must be a share of the weight norm in \(0, 1\)"),
    ({"drop_budget": 0.1}, "used only with drop_rank='auto'"),
    ({"sigma_init": "zero"}, r"--sigma-init: sigma_init must be one of \('randn', 'ones'\)"),
])
def test_bad_settings_fail_before_anything_loads(values, message):
    with pytest.raises(ValueError, match=message):
        resolve_config({}, {"task": "e2e", "model": "no/such-model", **values})


def test_other_methods_refuse_the_truncation_settings():
    with pytest.raises(ValueError, match="apply to method 'kasa' only, not 'lora'"):
        MethodSpec(method="lora", drop_rank="auto")
    with pytest.raises(ValueError, match="sigma_init apply to method 'kasa' only, not 'peft-kasa'"):
        MethodSpec(method="peft-kasa", sigma_init="ones")


def test_a_run_started_before_drop_rank_existed_resumes(tmp_path):
    """run_config.json of an unfinished run written before these settings existed: their defaults are what it used."""
    from kasa_peft.pipelines.run_dir import RUN_CONFIG_FILE, start_run_dir

    config = resolve_config({}, {"task": "e2e", "model": "m", "resume": True})
    recorded = {k: v for k, v in config.to_dict().items() if k not in ("drop_rank", "drop_budget", "sigma_init")}
    (tmp_path / RUN_CONFIG_FILE).write_text(json.dumps(recorded))
    start_run_dir(tmp_path, config)
    with pytest.raises(ValueError, match=r"different settings \(drop_rank\)"):
        start_run_dir(tmp_path, config.replace(drop_rank="auto"))
    with pytest.raises(ValueError, match=r"different settings \(sigma_init\)"):
        start_run_dir(tmp_path, config.replace(sigma_init="ones"))
