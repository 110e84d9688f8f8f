"""Saving and loading adapters: exact, SVD-free, checked before any change, atomic."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import tiny_bert, tiny_llama, token_batch

import kasa_peft.core.io as io
import kasa_peft.core.model as model_module
import kasa_peft.core.truncation as truncation
from kasa_peft import KasaConfig, inject, load_adapter, read_adapter, restore_adapter, save_adapter, set_adapter

from .helpers import outputs, train_steps

CONFIG = KasaConfig(r=4, target_modules=("query", "value", "intermediate.dense"), modules_to_save=("classifier",))


@pytest.fixture
def saved(tmp_path):
    """A trained BERT adapter (with the classifier saved) and the directory it was saved to."""
    model = inject(tiny_bert(), CONFIG)
    train_steps(model, token_batch())
    return model, save_adapter(model, tmp_path / "adapter")


def is_untouched(model: torch.nn.Module) -> bool:
    return not hasattr(model, "_kasa_state") and all(
        type(m).__module__.startswith(("torch", "transformers")) for m in model.modules())


def forbid(*_args, **_kwargs):
    raise AssertionError("load_adapter must not compute an SVD or eigendecomposition")


def test_load_reproduces_the_outputs_without_any_decomposition(saved, monkeypatch):
    model, path = saved
    monkeypatch.setattr(torch.linalg, "svd", forbid)
    monkeypatch.setattr(torch.linalg, "eigh", forbid)
    monkeypatch.setattr(truncation, "truncate_smallest", forbid)
    monkeypatch.setattr(model_module, "truncate_for", forbid)
    loaded = load_adapter(tiny_bert(), path)
    assert torch.equal(outputs(loaded, token_batch()), outputs(model, token_batch()))
    assert torch.equal(loaded.classifier.copies["default"].weight, model.classifier.copies["default"].weight)


def test_restore_copies_the_saved_values_into_the_same_parameters(saved):
    """Resuming: the untrained adapter of a fresh injection takes the saved values; parameters keep identity."""
    model, path = saved
    fresh = inject(tiny_bert(), CONFIG)
    before = {name: param for name, param in fresh.named_parameters() if param.requires_grad}
    restore_adapter(fresh, path)
    assert {name: param for name, param in fresh.named_parameters() if param.requires_grad} == before
    assert torch.equal(outputs(fresh, token_batch()), outputs(model, token_batch()))
    trained = dict(model.named_parameters())
    for name, param in before.items():
        assert torch.equal(param, trained[name]), name


@pytest.mark.parametrize("other", [CONFIG.replace(r=2), CONFIG.replace(target_modules=("query",))])
def test_restore_refuses_another_layout(saved, other):
    _, path = saved
    fresh = inject(tiny_bert(), other)
    before = {name: value.clone() for name, value in fresh.state_dict().items()}
    with pytest.raises(ValueError, match="resume with the settings the run was started with"):
        restore_adapter(fresh, path)
    assert all(torch.equal(value, before[name]) for name, value in fresh.state_dict().items())


def test_saved_files_hold_the_documented_format(saved):
    model, path = saved
    metadata = json.loads((path / "adapter_config.json").read_text())
    assert metadata["format"] == "kasa-peft" and metadata["modules_to_save"] == ["classifier"]
    assert KasaConfig.from_dict(metadata["config"]) == CONFIG
    assert metadata["layers"]["bert.encoder.layer.0.intermediate.dense"] == [48, 32]
    tensors = load_file(path / "adapter_model.safetensors")
    layer = "bert.encoder.layer.1.attention.self.value"
    assert {k for k in tensors if k.startswith(layer + ".")} == {
        f"{layer}.{key}" for key in ("A", "B", "sigma", "sigma_init", "dropped_us", "dropped_vt", "base_fingerprint")}
    assert torch.equal(tensors["modules_to_save.classifier.bias"], model.classifier.copies["default"].bias)


def test_load_under_another_name_next_to_an_existing_adapter(saved):
    model, path = saved
    target = inject(tiny_bert(), KasaConfig(r=2, target_modules=("key",)), "other")
    load_adapter(target, path, adapter_name="loaded")
    set_adapter(target, "loaded")
    assert torch.equal(outputs(target, token_batch()), outputs(model, token_batch()))


def bert_with_wider_intermediate() -> torch.nn.Module:
    """The same base, except that one adapted layer has another shape."""
    model = tiny_bert()
    model.bert.encoder.layer[1].intermediate.dense = torch.nn.Linear(32, 40)
    return model


@pytest.mark.parametrize("other_base, message", [
    (lambda: tiny_bert(seed=1), "differ from those it was trained on"),
    (bert_with_wider_intermediate,
     r"layer 'bert.encoder.layer.1.intermediate.dense' has shape \(40, 32\) here but \(48, 32\) in the adapter"),
    (tiny_llama, "which this model does not have"),
])
def test_another_base_is_refused_before_any_change(saved, other_base, message):
    _, path = saved
    model = other_base()
    with pytest.raises(ValueError, match="made for a different base model") as error:
        load_adapter(model, path)
    assert error.match(message)
    assert is_untouched(model)


@pytest.mark.parametrize("corrupt", [
    lambda file: file.write_bytes(file.read_bytes()[: file.stat().st_size // 2]),
    lambda file: file.write_bytes(b"\x00garbage" * 100),
], ids=["truncated", "garbage"])
def test_corrupt_weights_fail_cleanly(saved, corrupt):
    _, path = saved
    corrupt(path / "adapter_model.safetensors")
    model = tiny_bert()
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors is corrupt or truncated"):
        load_adapter(model, path)
    assert is_untouched(model)


@pytest.mark.parametrize("text, message", [
    ('{"format": "kasa-peft", "config": {', "is corrupt"),
    ("[1, 2]", "is corrupt"),
    ('{"format": "kasa-peft", "adapter_name": "default", "config": {}}', r"is incomplete \(no \['layers'"),
], ids=["cut", "not-an-object", "incomplete"])
def test_corrupt_config_fails_cleanly(saved, text, message):
    _, path = saved
    (path / "adapter_config.json").write_text(text)
    model = tiny_bert()
    with pytest.raises(ValueError, match=r"adapter_config\.json " + message):
        load_adapter(model, path)
    assert is_untouched(model)


def test_incomplete_weights_are_named(saved):
    _, path = saved
    file = path / "adapter_model.safetensors"
    tensors = load_file(file)
    del tensors["bert.encoder.layer.1.attention.self.query.dropped_vt"]
    save_file(tensors, file)
    model = tiny_bert()
    with pytest.raises(ValueError, match=r"tensor 'bert.encoder.layer.1.attention.self.query.dropped_vt' is missing"):
        load_adapter(model, path)
    assert is_untouched(model)


def test_a_peft_adapter_directory_gets_a_hint_that_leads_somewhere(tmp_path):
    """A PEFT KaSA adapter converts with `kasa-peft import`; that refuses a plain LoRA (a `--method lora` run)."""
    peft = pytest.importorskip("peft")
    for name, extra in (("kasa", {"kasa_config": peft.KasaConfig()}), ("lora", {})):
        model = peft.get_peft_model(tiny_bert(), peft.LoraConfig(r=2, target_modules=["query"], **extra))
        model.save_pretrained(tmp_path / name)
    with pytest.raises(ValueError, match="It is a PEFT KaSA adapter: convert it with `kasa-peft import`"):
        load_adapter(tiny_bert(), tmp_path / "kasa")
    with pytest.raises(ValueError, match=r"It is a PEFT LORA adapter \(a `--method` baseline run saves one\): "
                                         r"evaluate the run with `kasa-peft eval --run DIR`, or load it with "
                                         r"peft.PeftModel.from_pretrained\(base, DIR\)"):
        load_adapter(tiny_bert(), tmp_path / "lora")


def test_a_directory_without_the_files_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a KaSA adapter directory"):
        read_adapter(tmp_path)


def failing_save_file(*_args, **_kwargs):
    raise OSError("disk full")


def test_a_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    model = inject(tiny_bert(), CONFIG)
    monkeypatch.setattr(io, "save_file", failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(model, tmp_path / "adapter")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_save_keeps_the_previous_one_intact(saved, monkeypatch):
    model, path = saved
    before = {f.name: f.read_bytes() for f in path.iterdir()}
    train_steps(model, token_batch())
    monkeypatch.setattr(io, "save_file", failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(model, path)
    assert {f.name: f.read_bytes() for f in path.iterdir()} == before
    assert [p.name for p in path.parent.iterdir()] == ["adapter"]


def test_saving_again_replaces_the_adapter_files_and_keeps_others(saved):
    model, path = saved
    (path / "README.md").write_text("notes")
    train_steps(model, token_batch())
    save_adapter(model, path)
    assert (path / "README.md").read_text() == "notes"
    assert torch.equal(outputs(load_adapter(tiny_bert(), path), token_batch()), outputs(model, token_batch()))
    assert sorted(p.name for p in path.parent.iterdir()) == ["adapter"]
