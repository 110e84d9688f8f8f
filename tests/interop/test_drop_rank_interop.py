"""Adapters whose dropped count d differs from r and between layers: exports, combination, inspection, and the
pre-flight truncation report, against PEFT 0.21.2 and float64 SVDs."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch
from peft import PeftModel
from PIL import Image
from tiny_models import MIXED_BUDGET, MIXED_TAILS, tiny_bert, tiny_llama_with_tails, token_batch
from transformers import LlamaForCausalLM

import kasa_peft as kp
from kasa_peft.core.layer import weight_matrix
from kasa_peft.interop import (
    combine_adapters, export_lora, export_peft_kasa, format_truncation_report, inspect_adapter, plot_adapter,
    plot_spectra, truncation_report,
)

from .support import relative_error, train_like

MIXED = kp.KasaConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj"), drop_rank="auto", drop_budget=MIXED_BUDGET)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A saved base with constructed spectra and a trained-looking adapter dropping d = 4, 0, 2, 1 (r = 4)."""
    root = tmp_path_factory.mktemp("mixed")
    tiny_llama_with_tails().save_pretrained(root / "base")
    model = kp.inject(LlamaForCausalLM.from_pretrained(root / "base").eval(), MIXED)
    train_like(model, "default", seed=3)
    kp.save_adapter(model, root / "adapter")
    return root


def adapted(root) -> torch.nn.Module:
    return kp.load_adapter(LlamaForCausalLM.from_pretrained(root / "base").eval(), root / "adapter")


def test_lora_export_with_per_layer_ranks_is_exact_in_peft(mixed, tmp_path):
    out = export_lora(mixed / "adapter", tmp_path / "lora")
    written = json.loads((out / "adapter_config.json").read_text())
    ranks = {name: 4 + d for name, (_, d) in MIXED_TAILS.items()}  # r + d: 8, 4, 6, 5
    assert written["r"] == written["lora_alpha"] and written["rank_pattern"] == written["alpha_pattern"]
    peft_model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(mixed / "base").eval(), str(out)).eval()
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            layer = name.removeprefix("base_model.model.")
            assert module.r["default"] == ranks[layer] and module.scaling["default"] == 1.0, layer
    with torch.no_grad():
        expected = adapted(mixed)(token_batch()).logits
        original = LlamaForCausalLM.from_pretrained(mixed / "base").eval()(token_batch()).logits
        actual = peft_model(token_batch()).logits
    assert relative_error(actual, expected) <= 1e-5
    assert relative_error(original, expected) > 1e-2


def test_peft_kasa_export_refuses_other_counts_and_names_the_lora_format(mixed, tmp_path):
    with pytest.raises(ValueError, match="drops d=0 at model.layers.0.self_attn.v_proj .*--format lora"):
        export_peft_kasa(mixed / "adapter", tmp_path / "peft-kasa")
    assert not (tmp_path / "peft-kasa").exists()


def test_combination_keeps_each_layers_truncation(mixed):
    model = adapted(mixed)
    kp.inject(model, kp.KasaConfig(r=2, alpha=4, target_modules=("q_proj",), drop_rank=0), "other")
    train_like(model, "other", seed=4)
    layers = dict(kp.kasa_layers(model))
    expected = {}
    for name, layer in layers.items():
        delta = -layer.adapters["default"].dropped_us.double() @ layer.adapters["default"].dropped_vt.double()
        for adapter_name, weight in (("default", 0.7), ("other", -0.4)):
            if adapter_name in layer.adapters:
                a = layer.adapters[adapter_name]
                delta += weight * a.scale * a.B.double() @ torch.diag(a.sigma.double()) @ a.A.double()
        expected[name] = delta
    combine_adapters(model, {"default": 0.7, "other": -0.4}, "both")
    for name, layer in layers.items():
        combined = layer.adapters["both"]
        assert combined.dropped_rank == MIXED_TAILS[name][1]
        torch.testing.assert_close(combined.delta_weight().double(), expected[name], rtol=0, atol=1e-6)


def test_inspection_shows_each_layers_count_and_sigmas_change(mixed, tmp_path):
    info = inspect_adapter(mixed / "adapter")
    model = adapted(mixed)
    for name, layer in kp.kasa_layers(model):
        entry, adapter = info["layers"][name], layer.adapters["default"]
        assert entry["dropped_rank"] == MIXED_TAILS[name][1]
        assert entry["sigma_change"] == pytest.approx((adapter.sigma - adapter.sigma_init).tolist())
        assert len(entry["dropped_singular_values"]) == MIXED_TAILS[name][1]
    png = plot_adapter(mixed / "adapter", tmp_path / "what-changed.png")
    assert Image.open(png).size == (1400, 1200)


@pytest.mark.parametrize("config", [MIXED, MIXED.replace(drop_rank="r", drop_budget=None),
                                    MIXED.replace(drop_rank=3, drop_budget=None)], ids=["auto", "paper", "fixed"])
def test_the_preflight_report_matches_a_float64_svd(config):
    model = tiny_llama_with_tails()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = truncation_report(model, config, spectra=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert not hasattr(model, "_kasa_state")
    shares = {}
    for layer in report.layers:
        s = torch.linalg.svdvals(weight_matrix(model.get_submodule(layer.name)).double())
        budget_count = next(d for d in range(4, -1, -1) if s[len(s) - d:].norm() <= MIXED_BUDGET * s.norm())
        d = {"auto": budget_count, "r": 4}.get(config.drop_rank, config.drop_rank)
        assert layer.dropped == d, layer.name
        assert layer.share == pytest.approx(float(s[len(s) - d:].norm() / s.norm()), rel=1e-5, abs=1e-9)
        assert layer.singular_values == pytest.approx(s.tolist(), rel=1e-9)
        shares[layer.name] = layer.share
    by_module = {m.module: m for m in report.modules()}
    assert set(by_module) == {"self_attn.q_proj", "self_attn.v_proj"}
    v_layers = {n: v for n, v in shares.items() if n.endswith("v_proj")}
    v = by_module["self_attn.v_proj"]
    assert v.mean_share == pytest.approx(statistics.fmean(v_layers.values()))
    assert (v.max_share, v.worst_layer) == (max(v_layers.values()), max(v_layers, key=v_layers.get))
    text = format_truncation_report(report)
    assert f"{v.max_share:.2%}" in text and v.worst_layer in text


def test_the_spectra_plot_is_a_png(tmp_path):
    report = truncation_report(tiny_llama_with_tails(), MIXED, spectra=True)
    assert plot_spectra(report, tmp_path / "spectra.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="spectra=True"):
        plot_spectra(truncation_report(tiny_llama_with_tails(), MIXED), tmp_path / "none.png")


def test_the_report_leaves_existing_adapters_alone():
    model = kp.inject(tiny_bert(), kp.KasaConfig(r=2, target_modules=("query",)), "mine")
    report = truncation_report(model, kp.KasaConfig(r=3, target_modules=("value",)))
    assert [layer.dropped for layer in report.layers] == [3, 3]
    assert list(kp.kasa_state(model).configs) == ["mine"] and kp.kasa_state(model).active == "mine"


def test_a_combined_rank_may_reach_k_since_the_truncation_keeps_its_own_count(mixed):
    """q_proj has k = 32: ranks 30 + 4 combine (the truncation stays adapter 'default''s d, not the sum)."""
    model = adapted(mixed)
    kp.inject(model, kp.KasaConfig(r=30, target_modules=("q_proj",)), "big")
    combine_adapters(model, {"default": 1.0, "big": 1.0}, "sum")
    layer = model.get_submodule("model.layers.1.self_attn.q_proj")
    assert layer.adapters["sum"].A.shape[0] == 34 and layer.adapters["sum"].dropped_rank == 2


def test_an_imported_peft_adapter_does_not_claim_a_starting_sigma(setups, tmp_path):
    """PEFT does not record where lora_diag started, so the import's sigma_init is unknown (NaN), not ours."""
    from kasa_peft.interop import import_peft_kasa

    from .test_peft_kasa import peft_trained_kasa

    setup = setups["bert"]
    peft_dir, _ = peft_trained_kasa(setup, tmp_path)
    info = inspect_adapter(import_peft_kasa(peft_dir, setup.base_dir, tmp_path / "ours"))
    assert all(math.isnan(change) for layer in info["layers"].values() for change in layer["sigma_change"])
