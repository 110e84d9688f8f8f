"""Saving and loading adapters: exact, SVD-free, checked before any change, atomic."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import tiny_bert, tiny_llama, token_batch

import kasa_peft.core.io as io
import kasa_peft.core.model as model_module
import kasa_peft.core.truncation as truncation
from kasa_peft import KasaConfig, inject, load_adapter, read_adapter, restore_adapter, save_adapter, set_adapter

from .adapter_writer_script import FILLS
from .adapter_writer_script import base as writer_base
from .adapter_writer_script import model as filled_model
from .helpers import outputs, train_steps

WRITER = Path(__file__).with_name("adapter_writer_script.py")

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


def as_older_file(path: Path) -> Path:
    """Rewrite a saved adapter as kasa-peft wrote it before the safetensors header carried the metadata and
    ``tensors_sha256`` was recorded."""
    metadata = json.loads((path / "adapter_config.json").read_text())
    del metadata["tensors_sha256"]
    (path / "adapter_config.json").write_text(json.dumps(metadata))
    save_file(load_file(path / "adapter_model.safetensors"), path / "adapter_model.safetensors", {"format": "pt"})
    return path


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
    path = as_older_file(saved[1])  # newer files are read from the safetensors header
    (path / "adapter_config.json").write_text(text)
    model = tiny_bert()
    with pytest.raises(ValueError, match=r"adapter_config\.json " + message):
        load_adapter(model, path)
    assert is_untouched(model)


def test_incomplete_weights_are_named(saved):
    path = as_older_file(saved[1])  # without a checksum, which would catch the change first
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


def test_an_older_file_without_header_or_checksum_still_loads(saved):
    model, path = saved
    as_older_file(path)
    assert torch.equal(outputs(load_adapter(tiny_bert(), path), token_batch()), outputs(model, token_batch()))


def test_the_safetensors_header_wins_over_a_stale_config(saved):
    """A kill between the two renames leaves the new safetensors beside the previous adapter_config.json."""
    model, path = saved
    stale = (path / "adapter_config.json").read_text()
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.self.query.adapters["default"].sigma.add_(1.0)
    save_adapter(model, path)
    (path / "adapter_config.json").write_text(stale.replace('"alpha": 16.0', '"alpha": 3.0'))
    loaded = load_adapter(tiny_bert(), path)
    assert kasa_peft_alpha(loaded) == CONFIG.alpha
    assert torch.equal(outputs(loaded, token_batch()), outputs(model, token_batch()))


def kasa_peft_alpha(model: torch.nn.Module) -> float:
    return model._kasa_state.configs["default"].alpha


def consistent_alpha(path: Path) -> float:
    """The alpha of the adapter in ``path``, after checking that it loads and that its tensors are the ones the
    writer script saves with that alpha (no config of one save beside the tensors of another)."""
    metadata, tensors = read_adapter(path)
    alpha = metadata["config"]["alpha"]
    layers = [k for k in tensors if k.endswith((".A", ".B", ".sigma"))]
    assert layers and all(torch.all(tensors[k] == FILLS[alpha]) for k in layers)
    load_adapter(writer_base(), path)
    return alpha


def temporaries(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*"))


@pytest.mark.parametrize("k, alpha", [(1, 8.0), (2, 4.0), (3, 4.0)])
def test_a_kill_at_any_rename_leaves_the_old_or_the_new_adapter(tmp_path, k, alpha):
    """The writer saves adapter 'one' (alpha 8), then is killed (SIGKILL) at the k-th rename of saving 'two'
    (alpha 4) over it: before the safetensors rename, between it and the config's, or not at all."""
    path = tmp_path / "adapter"
    child = subprocess.run([sys.executable, str(WRITER), str(path), f"kill-at-replace:{k}"], capture_output=True,
                           text=True)
    assert child.returncode == (0 if k == 3 else -9), child.stderr
    assert consistent_alpha(path) == alpha
    save_adapter(filled_model(8.0), path)  # the next save removes what the killed one left
    assert temporaries(tmp_path) == []
    assert consistent_alpha(path) == 8.0


def test_a_kill_inside_the_tensor_writer_leaves_the_old_adapter_and_nothing_after_the_next_save(tmp_path):
    path = tmp_path / "adapter"
    child = subprocess.run([sys.executable, str(WRITER), str(path), "kill-while-writing"], capture_output=True,
                           text=True)
    assert child.returncode == -9, child.stderr
    assert consistent_alpha(path) == 8.0
    assert [p.name for p in path.rglob(".tmpK1lLd")] == [".tmpK1lLd"]
    save_adapter(filled_model(4.0), path)
    assert temporaries(tmp_path) == []
    assert consistent_alpha(path) == 4.0


def test_kill_9_at_random_moments_of_repeated_saves_leaves_a_whole_adapter(tmp_path):
    rng = random.Random(0)
    for attempt in range(5):
        path = tmp_path / f"adapter-{attempt}"
        child = subprocess.Popen([sys.executable, str(WRITER), str(path), "loop"], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        subprocess.run(["sleep", f"{rng.uniform(0, 0.05):.3f}"], check=True)
        child.kill()
        child.communicate()
        assert consistent_alpha(path) in FILLS
        save_adapter(filled_model(4.0), path)
        assert temporaries(tmp_path) == []
        assert consistent_alpha(path) == 4.0


def rewrite_metadata(path: Path, **changes) -> None:
    """Change the saved metadata (``config`` fields, or top-level ones such as ``adapter_name``) in both places
    it is stored, as a hand edit or another tool might."""
    metadata, tensors = read_adapter(path)
    top = {k: v for k, v in changes.items() if k in metadata}
    metadata = {**metadata, **top, "config": {**metadata["config"], **{k: v for k, v in changes.items()
                                                                        if k not in top}}}
    (path / "adapter_config.json").write_text(json.dumps(metadata))
    save_file(tensors, path / "adapter_model.safetensors", {"format": "pt", "kasa_peft_metadata": json.dumps(metadata)})


def test_a_config_rank_other_than_the_tensors_is_refused_before_any_change(saved, tmp_path):
    model, path = saved
    good = save_adapter(model, tmp_path / "good")
    rewrite_metadata(path, r=8)
    target = tiny_bert()
    with pytest.raises(ValueError, match=r"says r = 8 but layer 'bert\.encoder\.layer\.0\.attention\.self\.query' "
                                         "has rank 4"):
        load_adapter(target, path)
    assert is_untouched(target)
    assert torch.equal(outputs(load_adapter(target, good), token_batch()), outputs(model, token_batch()))


def test_a_saved_module_of_another_shape_is_refused_before_any_change(saved):
    _, path = saved
    target = tiny_bert()
    target.classifier = torch.nn.Linear(32, 5)
    with pytest.raises(ValueError, match="its copy of module 'classifier' has tensors"):
        load_adapter(target, path)
    assert is_untouched(target)


def flip_a_data_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    header_length = int.from_bytes(data[:8], "little")
    data[8 + header_length + (len(data) - 8 - header_length) // 2] ^= 0x40
    file.write_bytes(bytes(data))


def test_flipped_bytes_in_the_tensor_data_are_caught(saved):
    _, path = saved
    flip_a_data_byte(path / "adapter_model.safetensors")
    target = tiny_bert()
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors is corrupt: its tensor data do not match the "
                                         "sha256"):
        load_adapter(target, path)
    assert is_untouched(target)


def test_a_nan_written_into_an_older_file_is_caught(saved):
    path = as_older_file(saved[1])
    file = path / "adapter_model.safetensors"
    tensors = load_file(file)
    tensors["bert.encoder.layer.0.attention.self.value.dropped_us"][3, 1] = float("nan")
    save_file(tensors, file, {"format": "pt"})
    target = tiny_bert()
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors: tensor "
                                         r"'bert\.encoder\.layer\.0\.attention\.self\.value\.dropped_us' holds 1 NaN"):
        load_adapter(target, path)
    assert is_untouched(target)


def test_save_refuses_non_finite_tensors_unless_allowed(saved, tmp_path):
    model, path = saved
    before = {f.name: f.read_bytes() for f in path.iterdir()}
    with torch.no_grad():
        model.bert.encoder.layer[1].attention.self.query.adapters["default"].sigma[0] = float("inf")
    with pytest.raises(ValueError, match=r"tensor 'bert\.encoder\.layer\.1\.attention\.self\.query\.sigma' holds 1 "
                                         "NaN or infinite value"):
        save_adapter(model, path)
    assert {f.name: f.read_bytes() for f in path.iterdir()} == before
    written = save_adapter(model, tmp_path / "diverged", allow_non_finite=True)
    with pytest.raises(ValueError, match="holds 1 NaN or infinite value"):
        read_adapter(written)


def test_saving_removes_what_killed_writers_left_and_keeps_a_live_writers_files(saved):
    """Staging directories of kasa-peft 0.1 (``.<name>.tmp-*``, no pid) and temporaries of dead writers go; the
    temporary of a writer that still runs (here the test's parent process) stays."""
    model, path = saved
    legacy = path.parent / ".adapter.tmp-k2x9q1"
    legacy.mkdir()
    (legacy / "adapter_model.safetensors").write_bytes(b"half")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = path / f".adapter_model.safetensors.{int(dead.stdout)}.abc123.tmp"
    orphan.write_bytes(b"half")
    live = path / f".adapter_config.json.{os.getppid()}.abc123.tmp"
    live.write_text("{")
    save_adapter(model, path)
    assert not legacy.exists() and not orphan.exists() and live.exists()
