"""Bad input: a clear error, and nothing written or changed."""

from __future__ import annotations

import huggingface_hub.constants
import pytest
import torch
from tiny_models import tiny_bert

import kasa_peft as kp
from kasa_peft.interop import BaseModelNotFound, export_lora, export_merged, export_peft_kasa, load_pretrained
from kasa_peft.interop.cli_commands import export_command, import_command

EXPORTS = [export_lora, export_peft_kasa, export_merged]


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network attempts, no retries


def adapter_of_an_unsaved_base(path):
    """An adapter whose recorded base is a class name, not a loadable model."""
    model = kp.inject(tiny_bert(), kp.KasaConfig(r=2))
    return kp.save_adapter(model, path)


@pytest.mark.parametrize("export", EXPORTS)
def test_unavailable_base(tmp_path, offline, export):
    adapter = adapter_of_an_unsaved_base(tmp_path / "adapter")
    with pytest.raises(BaseModelNotFound, match=r"'BertForSequenceClassification' recorded in the adapter is not "
                                                 r"available here .*pass --base PATH"):
        export(adapter, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_explicit_base_path_that_does_not_exist(setups, tmp_path, offline):
    with pytest.raises(BaseModelNotFound, match="'/no/such/base' is not available here"):
        export_command(setups["bert"].adapter_dir, "lora", tmp_path / "out", base="/no/such/base")
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
