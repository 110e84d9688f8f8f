"""drop_rank / drop_budget: d dropped components per weight, decoupled from r (fixed, 0, or automatic per layer)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import MIXED_BUDGET, MIXED_TAILS, tiny_llama, tiny_llama_with_tails, token_batch, with_spectrum

import kasa_peft.core.model as model_module
import kasa_peft.core.truncation as truncation
from kasa_peft import (
    KasaConfig, dropped_components, inject, kasa_layers, load_adapter, merge, save_adapter, truncate_smallest, unmerge,
)
from kasa_peft.core.truncation import drop_count_within

from .helpers import dropped_product, outputs, rel_err, train_steps
from .test_io import as_older_file

MIXED = KasaConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj"), drop_rank="auto", drop_budget=MIXED_BUDGET)


def mixed_model() -> torch.nn.Module:
    """tiny_llama with constructed spectra, the automatic truncation (d = 4, 0, 2, 1) and a few training steps."""
    model = inject(tiny_llama_with_tails(), MIXED)
    train_steps(model, token_batch())
    return model


@pytest.mark.parametrize("budget, expected", [(0.002, 0), (0.005, 1), (0.01, 2), (0.02, 3), (0.05, 4), (0.5, 4)])
def test_the_automatic_count_is_the_largest_within_the_budget(budget, expected):
    """Spectrum 10 (x12), 1, 0.5, 0.2, 0.1: ||W||_F^2 = 1201.3; the smallest d carry sqrt(0.01 / 1201.3) = 0.29%,
    sqrt(0.05 / 1201.3) = 0.65%, sqrt(0.30 / 1201.3) = 1.58%, sqrt(1.30 / 1201.3) = 3.29% of ||W||_F."""
    values = torch.tensor([10.0] * 12 + [1.0, 0.5, 0.2, 0.1], dtype=torch.float64)
    assert drop_count_within(values.flip(0)[:4].square(), values.square().sum(), budget) == expected
    weight = with_spectrum(values, (24, 16)).float()
    for method in ("eigh", "svd"):
        dropped = truncate_smallest(weight, 4, method, budget=budget)
        assert dropped.us.shape == (24, expected) and dropped.vt.shape == (expected, 16)
        if expected:
            assert rel_err(dropped.us.double() @ dropped.vt.double(), dropped_product(weight, expected)) < 1e-5


def test_auto_never_drops_more_than_r_nor_k_minus_one():
    weight = with_spectrum([1e-6] * 6, (6, 9)).float()  # a flat spectrum: the d smallest carry sqrt(d / 6)
    assert truncate_smallest(weight, 3, budget=0.99).us.shape[1] == 3  # sqrt(3/6) = 0.71 <= 0.99
    assert truncate_smallest(weight, 10, budget=0.99).us.shape[1] == 5  # capped at k - 1 (sqrt(5/6) = 0.91)


def test_each_layer_drops_its_own_automatic_count():
    model = inject(tiny_llama_with_tails(), MIXED)
    counts = {name: layer.adapters["default"].dropped_rank for name, layer in kasa_layers(model)}
    assert counts == {name: d for name, (_, d) in MIXED_TAILS.items()}
    base = tiny_llama_with_tails()
    for name, layer in kasa_layers(model):
        adapter, d = layer.adapters["default"], counts[name]
        assert adapter.A.shape[0] == 4 and adapter.dropped_us.shape == (layer.out_features, d)
        if d:
            expected = dropped_product(base.get_submodule(name).weight, d)
            assert rel_err(adapter.dropped_us.double() @ adapter.dropped_vt.double(), expected) < 1e-5


@pytest.mark.parametrize("d", [0, 2, 6])
def test_a_fixed_count_is_dropped_from_every_layer_whatever_r(d):
    """d = 0 is KaSA's update with no truncation: the untrained model is the base, bit for bit."""
    base = tiny_llama()
    model = inject(tiny_llama(), KasaConfig(r=4, target_modules=("q_proj", "v_proj"), drop_rank=d))
    for name, layer in kasa_layers(model):
        adapter = layer.adapters["default"]
        assert adapter.A.shape[0] == 4 and adapter.dropped_rank == d
        delta = adapter.delta_weight().double()
        expected = -dropped_product(base.get_submodule(name).weight, d) if d else torch.zeros_like(delta)
        assert (delta - expected).abs().max() < 1e-6
    if d == 0:
        assert torch.equal(outputs(model, token_batch()), outputs(base, token_batch()))


def test_reload_of_mixed_counts_computes_no_decomposition(tmp_path, monkeypatch):
    model = mixed_model()
    path = save_adapter(model, tmp_path / "mixed")

    def forbid(*_args, **_kwargs):
        raise AssertionError("loading must not compute an SVD or eigendecomposition")

    for module, name in ((torch.linalg, "svd"), (torch.linalg, "eigh"), (torch.linalg, "svdvals"),
                         (truncation, "truncate_smallest"), (model_module, "truncate_for")):
        monkeypatch.setattr(module, name, forbid)
    loaded = load_adapter(tiny_llama_with_tails(), path)
    assert torch.equal(outputs(loaded, token_batch()), outputs(model, token_batch()))
    for name, parts in dropped_components(loaded, "default").items():
        assert parts.us.shape[1] == MIXED_TAILS[name][1]


def test_merge_and_unmerge_with_mixed_counts_are_exact():
    model = mixed_model()
    before = {name: layer.base_layer.weight.clone() for name, layer in kasa_layers(model)}
    expected = outputs(model, token_batch())
    merge(model)
    assert rel_err(outputs(model, token_batch()), expected) < 1e-5
    unmerge(model)
    for name, layer in kasa_layers(model):
        assert (layer.base_layer.weight - before[name]).abs().max() < 1e-6


def test_files_without_sigma_init_still_load(tmp_path):
    """Adapters saved before sigma_init was recorded load, with sigma_init unknown (NaN)."""
    from safetensors.torch import load_file, save_file

    model = mixed_model()
    path = save_adapter(model, tmp_path / "old")
    tensors = load_file(path / "adapter_model.safetensors")
    save_file({k: v for k, v in tensors.items() if not k.endswith(".sigma_init")}, path / "adapter_model.safetensors")
    as_older_file(path)  # nor a checksum (an older file)
    loaded = load_adapter(tiny_llama_with_tails(), path)
    assert torch.equal(outputs(loaded, token_batch()), outputs(model, token_batch()))
    assert all(layer.adapters["default"].sigma_init.isnan().all() for _, layer in kasa_layers(loaded))


def test_sigma_init_records_where_sigma_started():
    torch.manual_seed(5)
    model = inject(tiny_llama(), KasaConfig(r=4, target_modules=("q_proj",)))
    start = {name: layer.adapters["default"].sigma.detach().clone() for name, layer in kasa_layers(model)}
    train_steps(model, token_batch())
    for name, layer in kasa_layers(model):
        adapter = layer.adapters["default"]
        assert torch.equal(adapter.sigma_init, start[name]) and not torch.equal(adapter.sigma, start[name])


@pytest.mark.parametrize("settings, message", [
    ({"drop_rank": -1}, "drop_rank must be 'r', 'auto' or an integer >= 0"),
    ({"drop_rank": "all"}, "drop_rank must be 'r', 'auto' or an integer >= 0"),
    ({"drop_rank": True}, "drop_rank must be 'r', 'auto' or an integer >= 0"),
    ({"drop_rank": "auto", "drop_budget": 0.0}, r"drop_budget must be a share of the weight norm in \(0, 1\)"),
    ({"drop_rank": "auto", "drop_budget": 1.0}, r"drop_budget must be a share of the weight norm in \(0, 1\)"),
    ({"drop_rank": "auto", "drop_budget": -0.1}, r"drop_budget must be a share of the weight norm in \(0, 1\)"),
    ({"drop_budget": 0.01}, "drop_budget=0.01 is used only with drop_rank='auto'"),
    ({"sigma_init": "zeros"}, r"sigma_init must be one of \('randn', 'ones'\), got 'zeros'"),
])
def test_bad_settings_are_refused_by_the_config(settings, message):
    with pytest.raises(ValueError, match=message):
        KasaConfig(**settings)


def test_a_count_not_below_k_is_refused_before_any_change():
    model = tiny_llama()
    with pytest.raises(ValueError, match=r"drop_rank=16 is too large for layer 'model.layers.0.self_attn.v_proj' "
                                         r"of shape \(out=16, in=32\).*drop_rank <= 15"):
        inject(model, KasaConfig(r=4, target_modules=("q_proj", "v_proj"), drop_rank=16))
    assert not hasattr(model, "_kasa_state")
    assert all(type(m).__module__.startswith(("torch", "transformers")) for m in model.modules())


@pytest.mark.parametrize("method", ["eigh", "svd"])
def test_auto_that_drops_r_gives_the_papers_factors_bit_for_bit(method):
    """Where the budget allows all r components (MiniLM's query/value, for instance), a run is the paper's run."""
    weight = tiny_llama_with_tails().model.layers[0].self_attn.q_proj.weight  # d = 4 = r under MIXED_BUDGET
    auto, paper = truncate_smallest(weight, 4, method, budget=MIXED_BUDGET), truncate_smallest(weight, 4, method)
    assert torch.equal(auto.us, paper.us) and torch.equal(auto.vt, paper.vt)
