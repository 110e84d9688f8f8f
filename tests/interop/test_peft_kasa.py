"""PEFT's own KaSA layout: export (PEFT 0.21.2 loads it) and import (a PEFT-trained adapter into ours).

Tolerance: PEFT recomputes the truncation with a float32 SVD on every load, we store one computed in
float64. A float32 SVD's dropped part ``U_d S_d V_d^T`` is accurate to about ``k * eps32 * ||W||_2``
(~4e-6 of ||W|| for k = 32), and the outputs agreed to 2e-7 (BERT) and 7e-7 (Llama); 1e-5 leaves a
margin of 10x while staying far below what a missing truncation changes (5e-4 BERT, 0.14 Llama).
"""

from __future__ import annotations

import json

import peft
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file
from tiny_models import token_batch

import kasa_peft as kp
from kasa_peft.interop import export_lora, export_peft_kasa, import_peft_kasa, load_pretrained

from .support import relative_error

TOLERANCE = 1e-5


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_peft_loads_the_export_with_the_same_outputs(setups, tmp_path, name):
    setup = setups[name]
    out = export_peft_kasa(setup.adapter_dir, tmp_path / "peft-kasa")
    with torch.no_grad():
        expected = setup.adapted()(token_batch()).logits
        without_truncation = setup.adapted()
        for _, layer in kp.kasa_layers(without_truncation):
            layer.adapters["default"].dropped_us.zero_()
        untruncated = without_truncation(token_batch()).logits
        actual = PeftModel.from_pretrained(setup.base(), str(out)).eval()(token_batch()).logits
    assert relative_error(actual, expected) <= TOLERANCE
    assert relative_error(untruncated, expected) > 10 * TOLERANCE  # a missing truncation would be caught


def test_export_config_and_keys(setups, tmp_path):
    setup = setups["bert"]
    out = export_peft_kasa(setup.adapter_dir, tmp_path / "peft-kasa")
    written = json.loads((out / "adapter_config.json").read_text())
    assert written["kasa_config"] == {"beta": setup.config.beta, "gamma": setup.config.gamma}
    assert (written["r"], written["lora_alpha"], written["modules_to_save"]) == (3, 6, ["classifier"])
    reference = get_peft_model(setup.base(), LoraConfig.from_pretrained(str(out)))
    expected = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(reference).items()}
    assert {k: tuple(v.shape) for k, v in load_file(out / "adapter_model.safetensors").items()} == expected
    _, ours = kp.read_adapter(setup.adapter_dir)
    theirs = load_file(out / "adapter_model.safetensors")
    layer = "bert.encoder.layer.1.attention.self.value"
    assert torch.equal(theirs[f"base_model.model.{layer}.lora_diag"], ours[f"{layer}.sigma"])


def test_conv1d_is_refused_with_a_pointer_to_lora(setups, tmp_path):
    with pytest.raises(ValueError, match="Conv1D.*--format lora"):
        export_peft_kasa(setups["gpt2"].adapter_dir, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def peft_trained_kasa(setup, tmp_path):
    """A KaSA adapter made and saved by PEFT itself (sequence classification: PEFT adds the classifier)."""
    model = get_peft_model(setup.base(), LoraConfig(
        task_type="SEQ_CLS", r=3, lora_alpha=6, target_modules=["query", "value"],
        kasa_config=peft.KasaConfig(beta=0.01, gamma=0.002)))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "lora_diag" in name or "modules_to_save" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
        outputs = model.eval()(token_batch()).logits
    model.save_pretrained(str(tmp_path / "peft"))
    return tmp_path / "peft", outputs


def test_import_reproduces_the_peft_model(setups, tmp_path):
    setup = setups["bert"]
    peft_dir, peft_outputs = peft_trained_kasa(setup, tmp_path)
    out = import_peft_kasa(peft_dir, setup.base_dir, tmp_path / "ours")
    model = kp.load_adapter(setup.base(), out)
    with torch.no_grad():
        assert relative_error(model(token_batch()).logits, peft_outputs) <= TOLERANCE
    metadata, tensors = kp.read_adapter(out)
    config = kp.KasaConfig.from_dict(metadata["config"])
    assert (config.r, config.alpha, config.beta, config.gamma, config.reduction) == (3, 6.0, 0.01, 0.002, "sum")
    assert config.modules_to_save == ("classifier",) and metadata["modules_to_save"] == ["classifier"]
    layer = "bert.encoder.layer.0.attention.self.query"
    weight = setup.base().get_submodule(layer).weight.detach().double()
    u, s, vh = torch.linalg.svd(weight)
    dropped = (u[:, -3:] * s[-3:]) @ vh[-3:]  # computed once from the original base and stored
    torch.testing.assert_close(tensors[f"{layer}.dropped_us"].double() @ tensors[f"{layer}.dropped_vt"].double(),
                               dropped, rtol=0, atol=1e-6)


def test_import_leaves_a_given_base_unchanged(setups, tmp_path):
    setup = setups["bert"]
    peft_dir, _ = peft_trained_kasa(setup, tmp_path)
    base = setup.base()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    import_peft_kasa(peft_dir, base, tmp_path / "ours")
    assert not list(kp.kasa_layers(base))
    assert all(torch.equal(base.state_dict()[k], v) for k, v in before.items())


def test_import_refuses_what_is_not_a_peft_kasa_adapter(setups, tmp_path):
    setup = setups["bert"]
    lora_dir = export_lora(setup.adapter_dir, tmp_path / "lora")
    (tmp_path / "empty").mkdir()
    cases = [(lora_dir, ValueError, "not a PEFT KaSA adapter"),
             (setup.adapter_dir, ValueError, "already a kasa-peft adapter"),
             (tmp_path / "empty", FileNotFoundError, "not a PEFT adapter directory")]
    for source, error, message in cases:
        with pytest.raises(error, match=message):
            import_peft_kasa(source, setup.base_dir, tmp_path / "out")
        assert not (tmp_path / "out").exists()


def test_import_onto_another_base_fails_and_writes_nothing(setups, tmp_path):
    peft_dir, _ = peft_trained_kasa(setups["bert"], tmp_path)
    llama = load_pretrained(str(setups["llama"].base_dir))
    with pytest.raises(ValueError, match="match"):
        import_peft_kasa(peft_dir, llama, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(kp.kasa_layers(llama))
