"""inspect_adapter / format_inspection / plot_adapter on saved adapters, against values computed here."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import kasa_peft as kp
from kasa_peft.interop import format_inspection, inspect_adapter, plot_adapter
from kasa_peft.interop.cli_commands import inspect_command


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_numbers_match_an_independent_computation(setups, name):
    setup = setups[name]
    info = inspect_adapter(setup.adapter_dir)
    model, base = setup.adapted(), setup.base()
    r, scale = setup.config.r, setup.config.scale
    assert info["base_model"] == str(setup.base_dir) and info["config"]["r"] == r
    assert info["trainable_parameters"]["total"] == kp.trainable_parameters(model).trainable
    assert list(info["layers"]) == [n for n, _ in kp.kasa_layers(model)]
    for layer_name, layer in kp.kasa_layers(model):
        adapter, entry = layer.adapters["default"], info["layers"][layer_name]
        weight = kp.core.layer.weight_matrix(base.get_submodule(layer_name)).detach().double()
        singular_values = torch.linalg.svdvals(weight)
        update = scale * adapter.B.double() @ torch.diag(adapter.sigma.double()) @ adapter.A.double()
        assert entry["shape"] == list(weight.shape)
        assert entry["update_norm"] == pytest.approx(float(torch.linalg.matrix_norm(update)), rel=1e-9)
        assert entry["sigma"] == pytest.approx(adapter.sigma.tolist())
        assert entry["dropped_singular_values"] == pytest.approx(singular_values[-r:].tolist(), rel=1e-5)
        expected_energy = float(singular_values[-r:].pow(2).sum() / singular_values.pow(2).sum())
        assert entry["dropped_energy"] == pytest.approx(expected_energy, rel=1e-5)
        assert entry["dropped_norm"] == pytest.approx(float(singular_values[-r:].norm()), rel=1e-5)


def test_text_names_what_matters(setups):
    info = inspect_adapter(setups["bert"].adapter_dir)
    text = format_inspection(info)
    layer = "bert.encoder.layer.1.intermediate.dense"
    assert str(setups["bert"].base_dir) in text and "classifier" in text
    assert "attention.self.query, attention.self.value, intermediate.dense (6 layers)" in text
    assert f"{info['trainable_parameters']['total']:,} parameters" in text
    line = next(row for row in text.splitlines() if row.startswith(layer))
    assert f"{info['layers'][layer]['sigma'][0]:+.3g}" in line and "48x32" in line


def test_plot_is_a_png_of_the_requested_size(setups, tmp_path):
    path = plot_adapter(setups["llama"].adapter_dir, tmp_path / "plots" / "sigma.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(path).size == (1400, 1200)
    small = plot_adapter(setups["gpt2"].adapter_dir, tmp_path / "small.png", size=(800, 600))
    assert Image.open(small).size == (800, 600)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plots", "small.png"]  # no partial files left


def test_inspect_command_prints_and_plots(setups, tmp_path):
    text = inspect_command(setups["gpt2"].adapter_dir, plot=tmp_path / "s.png")
    assert "transformer.h.0.attn.c_attn" in text and text.endswith(f"written to {tmp_path / 's.png'}")
    assert (tmp_path / "s.png").is_file()


def test_fixed_sigma_is_not_counted_as_trainable(setups, tmp_path):
    model = kp.inject(setups["llama"].base(), kp.KasaConfig(r=2, target_modules=("q_proj",), learn_sigma=False))
    info = inspect_adapter(kp.save_adapter(model, tmp_path / "fixed"))
    assert info["trainable_parameters"]["total"] == kp.trainable_parameters(model).trainable
