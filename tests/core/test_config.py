"""KasaConfig validation and layer targeting."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import tiny_bert, tiny_gpt2, tiny_llama

from kasa_peft import KasaConfig, KasaLayer, inject, target_layer_names


@pytest.mark.parametrize("changes, message", [
    ({"beta": -1e-4}, "beta must be a finite number >= 0"),
    ({"gamma": -1.0}, "gamma must be a finite number >= 0"),
    ({"beta": math.inf}, "beta must be a finite number"),
    ({"gamma": math.inf}, "gamma must be a finite number"),
    ({"dropout": math.nan}, r"dropout must be in \[0, 1\)"),
    ({"r": 0}, "r must be a positive integer"),
    ({"r": 2.5}, "r must be a positive integer"),
    ({"alpha": 0.0}, "alpha must be a positive"),
    ({"alpha": math.nan}, "alpha must be a positive"),
    ({"dropout": 1.5}, r"dropout must be in \[0, 1\)"),
    ({"dropout": -0.1}, r"dropout must be in \[0, 1\)"),
    ({"regularizer": "l2"}, r"regularizer must be one of \('paper', 'reference'\), got 'l2'"),
    ({"reduction": "max"}, r"reduction must be one of \('mean', 'sum'\), got 'max'"),
    ({"truncation": "qr"}, r"truncation must be one of \('eigh', 'svd'\), got 'qr'"),
    ({"target_modules": ()}, "target_modules is empty"),
    ({"target_modules": "query("}, "target_modules='query\\(' is not a valid regular expression"),
    ({"exclude_modules": "[a-"}, "exclude_modules='\\[a-' is not a valid regular expression"),
])
def test_invalid_values_are_rejected_on_construction(changes, message):
    with pytest.raises(ValueError, match=message):
        KasaConfig(**changes)


def test_from_dict_rejects_unknown_fields_by_name():
    with pytest.raises(ValueError, match=r"unknown KasaConfig fields \['lora_alpha'\]"):
        KasaConfig.from_dict({"r": 4, "lora_alpha": 8})


def test_dict_round_trip_and_lists_become_tuples():
    config = KasaConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["score"],
                        regularizer="reference", reduction="sum", use_rslora=True)
    assert config.target_modules == ("q_proj", "v_proj")
    assert KasaConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("use_rslora, expected", [(False, 16 / 4), (True, 16 / 2)])
def test_scale(use_rslora, expected):
    assert KasaConfig(r=4, alpha=16, use_rslora=use_rslora).scale == expected


def test_names_suffixes_regex_and_exclusions():
    model = tiny_llama()
    by_suffix = target_layer_names(model, KasaConfig(target_modules=("q_proj", "mlp.down_proj")))
    assert by_suffix == [f"model.layers.{i}.{s}" for i in (0, 1) for s in ("self_attn.q_proj", "mlp.down_proj")]
    by_regex = target_layer_names(model, KasaConfig(target_modules=r".*\.1\.self_attn\.[kv]_proj"))
    assert by_regex == ["model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.v_proj"]
    config = KasaConfig(target_modules=("q_proj",), exclude_modules=("layers.0.self_attn.q_proj",))
    excluded = target_layer_names(model, config)
    assert excluded == ["model.layers.1.self_attn.q_proj"]


def test_a_suffix_matches_whole_name_parts_only():
    with pytest.raises(ValueError, match="matches no"):
        target_layer_names(tiny_llama(), KasaConfig(target_modules=("proj",)))


def test_no_match_lists_the_linear_layers_and_leaves_the_model_untouched():
    model = tiny_bert()
    with pytest.raises(ValueError, match="matches no") as error:
        inject(model, KasaConfig(target_modules=("qkv",)))
    assert "bert.encoder.layer.0.attention.self.query" in str(error.value)
    assert "classifier" in str(error.value)
    assert not any(isinstance(m, KasaLayer) for m in model.modules())
    assert not hasattr(model, "_kasa_state")


def test_all_linear_excludes_the_lm_head():
    model = tiny_llama()
    expected = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    assert target_layer_names(model, KasaConfig(target_modules="all-linear")) == expected
    assert len(expected) == 14


def test_all_linear_includes_gpt2_conv1d_but_not_the_tied_head():
    names = target_layer_names(tiny_gpt2(), KasaConfig(target_modules="all-linear"))
    assert names == [f"transformer.h.{i}.{s}" for i in (0, 1)
                     for s in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]


@pytest.mark.parametrize("modules_to_save", [(), ("classifier",)])
def test_all_linear_excludes_the_classification_head(modules_to_save):
    model = tiny_bert()
    expected = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "classifier"]
    config = KasaConfig(target_modules="all-linear", modules_to_save=modules_to_save)
    assert target_layer_names(model, config) == expected


def test_modules_to_save_that_match_nothing_are_named():
    with pytest.raises(ValueError, match=r"modules_to_save \['head'\] match no module"):
        inject(tiny_bert(), KasaConfig(r=2, modules_to_save=("head",)))
