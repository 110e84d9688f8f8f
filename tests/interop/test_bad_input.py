"""Bad input: a clear error, and nothing written or changed."""

from __future__ import annotations

import json
import re

import huggingface_hub.constants
import pytest
import torch
from peft import PeftModel
from tiny_models import tiny_llama, token_batch
from transformers import LlamaForCausalLM

import kasa_peft as kp
from kasa_peft.cli import main
from kasa_peft.interop import BaseModelNotFound, export_lora, export_merged, export_peft_kasa, load_pretrained
from kasa_peft.core.model import temporary_adapter
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


# ---------------------------------------------------------------------------- adapter files with bad contents


def damaged_copy(source, path, metadata=lambda m: m, tensors=lambda t: t):
    """A copy of adapter ``source`` whose metadata / tensors were changed by hand, with a valid checksum (so only
    the values are wrong), written in both places the metadata is kept."""
    import shutil

    from safetensors.torch import save_file

    from kasa_peft.core.io import tensor_checksum

    shutil.copytree(source, path)
    old, values = json.loads((path / "adapter_config.json").read_text()), dict(kp.read_adapter(source)[1])
    values = tensors(values)
    changed = metadata({**old, "config": dict(old["config"])}) | {"tensors_sha256": tensor_checksum(values)}
    (path / "adapter_config.json").write_text(json.dumps(changed))
    save_file(values, path / "adapter_model.safetensors", {"format": "pt", "kasa_peft_metadata": json.dumps(changed)})
    return path


def set_config(**changes):
    return lambda metadata: {**metadata, "config": {**metadata["config"], **changes}}


def without(key_suffix):
    return lambda tensors: {k: v for k, v in tensors.items() if not k.endswith(key_suffix)}


DAMAGE = {
    "alpha-string": (dict(metadata=set_config(alpha="16")), r"alpha must be a positive number, got '16'"),
    "dropout-null": (dict(metadata=set_config(dropout=None)), r"dropout must be in \[0, 1\), got None"),
    "r-bool": (dict(metadata=set_config(r=True)), r"r must be a positive integer, got True"),
    "learn-sigma-string": (dict(metadata=set_config(learn_sigma="no")), r"learn_sigma must be true or false"),
    "layers-list": (dict(metadata=lambda m: {**m, "layers": list(m["layers"])}), r"layers must map each"),
    "shape-string": (dict(metadata=lambda m: {**m, "layers": {k: "ab" for k in m["layers"]}}),
                     r"has shape 'ab', expected \[out_features, in_features\]"),
    "modules-string": (dict(metadata=lambda m: {**m, "modules_to_save": "classifier"}),
                       r"modules_to_save 'classifier' is not a list"),
    "tolerance-huge": (dict(metadata=lambda m: {**m, "base_fingerprint_tolerance": 1e9}),
                       r"base_fingerprint_tolerance 1000000000.0 is not a relative distance"),
    "version-string": (dict(metadata=lambda m: {**m, "format_version": "1"}), r"format_version '1' is not"),
    "dropped-vt-missing": (dict(tensors=without(".dropped_vt")), r"tensor '.*\.dropped_vt' is missing"),
    "sigma-scalar": (dict(tensors=lambda t: {k: (v[0] if k.endswith(".sigma") else v) for k, v in t.items()}),
                     r"tensor '.*\.sigma' is a 0-D"),
    "r-huge": (dict(metadata=set_config(r=10**12)), r"says r = 1000000000000 but layer .* has rank 3"),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_adapter_is_one_error_naming_the_file_for_every_reader(setups, tmp_path, capsys, damage):
    """`inspect`, `load_adapter`, `predict` and the exports read an adapter through the same validation."""
    changes, message = DAMAGE[damage]
    path = damaged_copy(setups["bert"].adapter_dir, tmp_path / "damaged", **changes)
    with pytest.raises(ValueError, match=message):
        kp.read_adapter(path)
    base = setups["bert"].base()
    before = {n: type(m) for n, m in base.named_modules()}
    with pytest.raises(ValueError, match=message):
        kp.load_adapter(base, path)
    assert {n: type(m) for n, m in base.named_modules()} == before and not hasattr(base, "_kasa_state")
    capsys.readouterr()
    for command in (["inspect", str(path)], ["export", str(path), "--format", "lora", "--out", str(tmp_path / "o")],
                    ["predict", "--model", str(setups["bert"].base_dir), "--adapter", str(path), "--text", "w1"]):
        assert main(command) == 1, command
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("kasa-peft: error: ") and str(path) in err[0], (command, err)
        assert re.search(message, err[0]), err[0]
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------ failed loads leave the model as it was


def structure(model: torch.nn.Module) -> tuple:
    """Everything a failed load could leave behind: module types, state-dict keys, requires_grad, the KaSA state."""
    state = getattr(model, "_kasa_state", None)
    return ({name: type(m) for name, m in model.named_modules()}, list(model.state_dict()),
            {name: p.requires_grad for name, p in model.named_parameters()},
            None if state is None else (sorted(state.configs), state.active))


def adapter_of_another_base(setup, path):
    other = setup.base()
    with torch.no_grad():
        next(p for n, p in other.named_parameters() if n.endswith(("value.weight", "v_proj.weight"))).mul_(3)
    kp.inject(other, setup.config)
    return kp.save_adapter(other, path)


def test_a_failed_multi_adapter_load_leaves_a_plain_model_exactly_as_it_was(setups, tmp_path):
    from kasa_peft.interop import load_adapters

    model = setups["bert"].base()
    before = structure(model)
    other = adapter_of_another_base(setups["bert"], tmp_path / "other")
    with pytest.raises(ValueError, match="different base model"):
        load_adapters(model, {"good": setups["bert"].adapter_dir, "other": other})
    assert structure(model) == before
    model.save_pretrained(tmp_path / "saved")  # what the issue saw: wrapper keys written, weights lost on reload
    with torch.no_grad():
        assert torch.equal(load_pretrained(str(tmp_path / "saved"))(token_batch()).logits, model(token_batch()).logits)


def test_a_failed_load_onto_an_adapted_model_leaves_its_adapter_and_layers_as_they_were(setups, tmp_path):
    from kasa_peft.interop import load_adapters

    model = kp.inject(setups["llama"].base(), kp.KasaConfig(r=2, target_modules=("q_proj",)), "mine")
    before = structure(model)
    with torch.no_grad():
        expected = model(token_batch()).logits
    other = adapter_of_another_base(setups["llama"], tmp_path / "other")
    with pytest.raises(ValueError, match="different base model"):
        load_adapters(model, {"all": setups["llama"].adapter_dir, "other": other})
    assert structure(model) == before
    with pytest.raises(RuntimeError, match="boom"), temporary_adapter(
            model, lambda m, n: kp.inject(m, setups["llama"].config, n)):
        raise RuntimeError("boom")
    assert structure(model) == before
    with torch.no_grad():
        assert torch.equal(model(token_batch()).logits, expected)


def test_a_single_load_failing_after_the_checks_leaves_the_model_as_it_was(setups, monkeypatch):
    model = setups["bert"].base()
    before = structure(model)
    monkeypatch.setattr(kp.ModulesToSave, "add_copy", lambda *a: (_ for _ in ()).throw(RuntimeError("no memory")))
    with pytest.raises(RuntimeError, match="no memory"):
        kp.load_adapter(model, setups["bert"].adapter_dir)
    assert structure(model) == before


def test_a_file_size_limit_during_a_merged_export_names_the_file_and_leaves_nothing(setups, tmp_path):
    import subprocess
    import sys

    limited = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)); "
               "from kasa_peft.cli import main; sys.exit(main(sys.argv[1:]))")
    out = tmp_path / "merged"
    result = subprocess.run([sys.executable, "-c", limited, "export", str(setups["llama"].adapter_dir), "--format",
                             "merged", "--out", str(out), "--base", str(setups["llama"].base_dir)],
                            capture_output=True, text=True, timeout=600)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[-1].startswith(f"kasa-peft: error: no space left on the device / file too large while writing "
                                f"{out} (Error while serializing: I/O error: File too large"), lines[-1]
    assert list(tmp_path.iterdir()) == []


PEFT_DAMAGE = {
    "no-r": (lambda c: {k: v for k, v in c.items() if k != "r"}, r"the config has no rank r"),
    "kasa-config-yes": (lambda c: {**c, "kasa_config": "yes"}, r"kasa_config is 'yes', not a mapping"),
    "r-string": (lambda c: {**c, "r": "4"}, r"r must be a positive integer, got '4'"),
    "alpha-null-beta-string": (lambda c: {**c, "kasa_config": {"beta": "1e-4"}},
                               r"beta must be a finite number >= 0 .*got '1e-4'"),
    "modules-to-save-number": (lambda c: {**c, "modules_to_save": 5}, r"modules_to_save is 5, not a list"),
}


@pytest.mark.parametrize("damage", PEFT_DAMAGE, ids=list(PEFT_DAMAGE))
def test_import_of_a_peft_kasa_adapter_with_bad_config_values_is_one_error_naming_it(setups, tmp_path, capsys,
                                                                                     damage):
    change, message = PEFT_DAMAGE[damage]
    peft_dir = export_peft_kasa(setups["llama"].adapter_dir, tmp_path / "peft")
    config_file = peft_dir / "adapter_config.json"
    config_file.write_text(json.dumps(change(json.loads(config_file.read_text()))))
    code = main(["import", str(peft_dir), "--out", str(tmp_path / "out"), "--base", str(setups["llama"].base_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith(f"kasa-peft: error: {config_file}: "), err
    assert re.search(message, err[0]), err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["/tmp/answers", "sub/dir", "a\\b", "x\0y"])
def test_an_adapter_name_never_becomes_a_path_outside_its_directory(name, tmp_path):
    """Adapter names also name files (the judge's ``answers/NAME.jsonl``): a separator could leave the directory."""
    from kasa_peft.interop.cli_commands import parse_adapter_specs

    with pytest.raises(ValueError, match=r"invalid adapter name .*without '\.', '/' or '\\'"):
        parse_adapter_specs([f"{name}={tmp_path}"])
