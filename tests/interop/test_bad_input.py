"""Bad input: a clear error, and nothing written or changed."""

from __future__ import annotations

import json

import huggingface_hub.constants
import pytest
import torch
from peft import PeftModel
from tiny_models import tiny_llama, token_batch
from transformers import LlamaForCausalLM

import kasa_peft as kp
from kasa_peft.cli import main
from kasa_peft.interop import BaseModelNotFound, export_lora, export_merged, export_peft_kasa, load_pretrained
from kasa_peft.interop.cli_commands import export_command, import_command

from .support import relative_error

EXPORTS = [export_lora, export_peft_kasa, export_merged]


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network attempts, no retries


def adapter_of_an_unsaved_base(path):
    """An adapter saved from the Python API for a model that was never saved (no ``config.name_or_path``)."""
    model = kp.inject(tiny_llama(), kp.KasaConfig(r=2, target_modules=("q_proj", "v_proj")))
    return kp.save_adapter(model, path)


def test_an_unsaved_base_is_recorded_as_unknown_not_as_its_class_name(tmp_path):
    assert kp.read_adapter(adapter_of_an_unsaved_base(tmp_path / "adapter"))[0]["base_model"] == ""


@pytest.mark.parametrize("export", [export_lora, export_peft_kasa])
def test_lora_and_peft_kasa_exports_need_only_the_adapter_file(tmp_path, offline, export, monkeypatch):
    """Every factor is in the adapter file: no base is loaded, nothing is asked of the network."""
    import socket

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("asked the network"))
    adapter = adapter_of_an_unsaved_base(tmp_path / "adapter")
    out = export(adapter, tmp_path / "out")
    written = json.loads((out / "adapter_config.json").read_text())
    assert written["base_model_name_or_path"] is None and written["task_type"] == "CAUSAL_LM"
    base = tiny_llama()
    expected = kp.load_adapter(tiny_llama(), adapter)
    with torch.no_grad():
        assert relative_error(PeftModel.from_pretrained(base, str(out))(token_batch()).logits,
                              expected(token_batch()).logits) <= 1e-5


def test_a_merged_export_needs_a_base_and_says_how_to_give_one(tmp_path, offline):
    adapter = adapter_of_an_unsaved_base(tmp_path / "adapter")
    with pytest.raises(BaseModelNotFound, match=r"the adapter does not record its base model .*pass --base PATH"):
        export_merged(adapter, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_a_merged_export_onto_a_base_without_a_tokenizer_copies_none(tmp_path, offline):
    tiny_llama().save_pretrained(tmp_path / "base")  # weights only, as a model saved from Python
    adapter = adapter_of_an_unsaved_base(tmp_path / "adapter")
    out = tmp_path / "out"
    base = str(tmp_path / "base")
    assert main(["export", str(adapter), "--format", "merged", "--out", str(out), "--base", base]) == 0
    assert (out / "config.json").is_file() and not (out / "tokenizer_config.json").exists()
    with torch.no_grad():
        merged = LlamaForCausalLM.from_pretrained(out)(token_batch()).logits
        expected = kp.load_adapter(tiny_llama(), adapter)(token_batch()).logits
    assert relative_error(merged, expected) <= 1e-5


def test_explicit_base_path_that_does_not_exist(setups, tmp_path, offline):
    with pytest.raises(BaseModelNotFound, match="'/no/such/base' is not available here"):
        export_command(setups["bert"].adapter_dir, "merged", tmp_path / "out", base="/no/such/base")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("export", EXPORTS)
def test_mismatched_base(setups, tmp_path, export):
    other = load_pretrained(str(setups["bert"].base_dir))
    with torch.no_grad():
        other.bert.encoder.layer[0].attention.self.query.weight.mul_(2.0)
    with pytest.raises(ValueError, match="different base model"):
        export(setups["bert"].adapter_dir, tmp_path / "out", base_model=other)
    assert list(tmp_path.iterdir()) == [] and not list(kp.kasa_layers(other))


def test_output_directory_that_is_not_empty(setups, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an empty directory"):
        export_lora(setups["llama"].adapter_dir, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    (tmp_path / "empty").mkdir()
    export_lora(setups["llama"].adapter_dir, tmp_path / "empty")  # an empty one is fine
    assert (tmp_path / "empty" / "adapter_config.json").is_file()


def test_export_command_formats(setups, tmp_path):
    with pytest.raises(ValueError, match="unknown export format 'onnx'"):
        export_command(setups["llama"].adapter_dir, "onnx", tmp_path / "out")
    markers = {"lora": "adapter_config.json", "peft-kasa": "adapter_config.json", "merged": "config.json"}
    for fmt, marker in markers.items():
        out = export_command(setups["llama"].adapter_dir, fmt, tmp_path / fmt)
        assert (out / marker).is_file()
    imported = import_command(tmp_path / "peft-kasa", tmp_path / "imported", base=setups["llama"].base_dir)
    assert kp.read_adapter(imported)[0]["adapter_name"] == "default"


def test_export_of_an_unknown_adapter_name(setups, tmp_path):
    with pytest.raises(ValueError, match="no adapter named 'nope'"):
        export_lora(setups["llama"].adapted(), tmp_path / "out", adapter_name="nope")
    assert list(tmp_path.iterdir()) == []
