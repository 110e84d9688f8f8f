"""Several saved adapters on one base: load, switch, delete, mixed batches, tagged inputs, grouped runs."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import token_batch

import kasa_peft as kp
from core.test_io import rewrite_metadata
from kasa_peft.interop import (
    TaggedInput, adapter_active, load_adapters, load_pretrained, read_tagged_inputs, run_by_adapter,
)
from kasa_peft.interop.cli_commands import parse_adapter_specs

from .support import train_like


def save_task_adapters(setup, tmp_path, tasks: dict[str, kp.KasaConfig]) -> dict[str, str]:
    """Adapters of different ranks and targets for one base, each saved alone; ``{name: dir}``."""
    dirs = {}
    for seed, (name, config) in enumerate(tasks.items()):
        model = setup.base()
        kp.inject(model, config, name)
        train_like(model, name, seed=10 + seed)
        dirs[name] = str(kp.save_adapter(model, tmp_path / name))
    return dirs


BERT_TASKS = {  # different ranks, different targets, one with its own classifier
    "a": kp.KasaConfig(r=2, target_modules=("query",), modules_to_save=("classifier",)),
    "b": kp.KasaConfig(r=4, target_modules=("value", "intermediate.dense")),
}
GPT2_TASKS = {"a": kp.KasaConfig(r=2, target_modules=("c_attn",)),
              "b": kp.KasaConfig(r=3, target_modules=("c_fc", "attn.c_proj"))}


def alone(setup, adapter_dir, x: torch.Tensor) -> torch.Tensor:
    """The output of the base with only this adapter (or none) loaded."""
    model = setup.base() if adapter_dir is None else kp.load_adapter(setup.base(), adapter_dir)
    with torch.no_grad():
        return model(x).logits


def test_switching_and_deleting(setups, tmp_path):
    setup = setups["bert"]
    dirs = save_task_adapters(setup, tmp_path, BERT_TASKS)
    model = load_adapters(setup.base(), dirs)
    x = token_batch()
    with torch.no_grad():
        for name in ("a", "b", "a"):
            kp.set_adapter(model, name)
            torch.testing.assert_close(model(x).logits, alone(setup, dirs[name], x), rtol=0, atol=1e-6)
        kp.delete_adapter(model, "a")
        kp.set_adapter(model, "b")
        torch.testing.assert_close(model(x).logits, alone(setup, dirs["b"], x), rtol=0, atol=1e-6)
        with kp.disable_adapters(model):
            torch.testing.assert_close(model(x).logits, alone(setup, None, x), rtol=0, atol=0)
    assert set(kp.kasa_state(model).configs) == {"b"}


@pytest.mark.parametrize("name, tasks", [("bert", BERT_TASKS), ("gpt2", GPT2_TASKS)])
def test_mixed_batch_equals_each_example_alone(setups, tmp_path, name, tasks):
    setup = setups[name]
    dirs = save_task_adapters(setup, tmp_path, tasks)
    model = load_adapters(setup.base(), dirs)
    x = token_batch(batch=5)
    names = ["a", None, "b", "a", None]
    with torch.no_grad(), kp.adapters_per_example(model, names):
        mixed = model(x).logits
    for row, adapter in enumerate(names):
        expected = alone(setup, dirs.get(adapter), x[row:row + 1])
        torch.testing.assert_close(mixed[row:row + 1], expected, rtol=0, atol=1e-5)
    assert kp.kasa_state(model).active == "b"


def test_mixed_batch_naming_an_unknown_adapter_fails_before_running(setups, tmp_path):
    model = load_adapters(setups["gpt2"].base(), save_task_adapters(setups["gpt2"], tmp_path, GPT2_TASKS))
    with pytest.raises(ValueError, match=r"unknown adapter names \['c'\]"):
        with kp.adapters_per_example(model, ["a", "c", None]):
            pass
    assert all(layer.per_example_adapters is None for _, layer in kp.kasa_layers(model))


def test_load_adapters_is_all_or_nothing(setups, tmp_path):
    setup = setups["bert"]
    dirs = save_task_adapters(setup, tmp_path, BERT_TASKS)
    model = load_adapters(setup.base(), {"a": dirs["a"]})
    with pytest.raises(ValueError, match=r"adapter names \['a'\] are already used"):
        load_adapters(model, {"b": dirs["b"], "a": dirs["a"]})
    other_base = kp.inject(load_pretrained(str(setup.base_dir)), kp.KasaConfig(r=2, target_modules=("query",)), "x")
    with torch.no_grad():
        for param in other_base.parameters():
            param.mul_(1.5)  # another base with the same shapes
    kp.save_adapter(other_base, tmp_path / "foreign", "x")
    with pytest.raises(ValueError, match="different base model"):
        load_adapters(model, {"b": dirs["b"], "foreign": tmp_path / "foreign"})
    assert set(kp.kasa_state(model).configs) == {"a"}  # "b" was loaded, then removed again
    with pytest.raises(FileNotFoundError):
        load_adapters(model, {"c": tmp_path / "missing"})


def test_adapter_specs():
    assert parse_adapter_specs(["a=/x", "b=/y=z", "/d"]) == {"a": "/x", "b": "/y=z", "default": "/d"}
    with pytest.raises(ValueError, match="'a' is used twice"):
        parse_adapter_specs(["a=/x", "a=/y"])
    with pytest.raises(ValueError, match="expected NAME=DIR"):
        parse_adapter_specs(["=/x"])
    with pytest.raises(ValueError, match=r"--adapter 'a\.b=/x': invalid adapter name 'a\.b': .* without '\.'"):
        parse_adapter_specs(["a.b=/x"])


@pytest.mark.parametrize("where", ["argument", "file"])
def test_a_dotted_adapter_name_is_refused_before_the_model_changes(setups, tmp_path, where):
    """torch's ModuleDict refuses '.' in keys (a raw KeyError half-way through injecting); the name is checked first."""
    setup = setups["bert"]
    model = setup.base()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    if where == "argument":
        with pytest.raises(ValueError, match="invalid adapter name 'a.b'"):
            load_adapters(model, {"a.b": setup.adapter_dir})
    else:
        config_file = tmp_path / "adapter" / "adapter_config.json"
        kp.save_adapter(setup.adapted(), tmp_path / "adapter")
        rewrite_metadata(tmp_path / "adapter", adapter_name="a.b")
        with pytest.raises(ValueError, match=f"{config_file}: invalid adapter name 'a.b'"):
            kp.load_adapter(model, tmp_path / "adapter")
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], v) for k, v in before.items())
    assert not list(kp.kasa_layers(model))


def test_tagged_inputs():
    lines = ["a\thello there", "plain text", "\tbase model text", "",
             json.dumps({"adapter": "b", "text": "x", "text_pair": "y"}), json.dumps({"adapter": None, "prompt": "p"}),
             json.dumps({"text": "default one"})]
    inputs = read_tagged_inputs(lines, adapters={"a", "b"}, default="a")
    assert inputs == [TaggedInput("a", {"text": "hello there"}), TaggedInput("a", {"text": "plain text"}),
                      TaggedInput(None, {"text": "base model text"}), TaggedInput("b", {"text": "x", "text_pair": "y"}),
                      TaggedInput(None, {"prompt": "p"}), TaggedInput("a", {"text": "default one"})]
    assert [i.text for i in inputs] == ["hello there", "plain text", "base model text", "x", "p", "default one"]
    with pytest.raises(ValueError, match=r"input line 2: adapter 'c' is not loaded"):
        read_tagged_inputs(["a\tok", "c\tnot ok"], adapters={"a"})
    with pytest.raises(ValueError, match="input line 1"):
        read_tagged_inputs(["{not json"], adapters={"a"})


def test_run_by_adapter_groups_and_keeps_input_order(setups, tmp_path):
    setup = setups["bert"]
    dirs = save_task_adapters(setup, tmp_path, BERT_TASKS)
    model = load_adapters(setup.base(), dirs)
    kp.set_adapter(model, "a")
    x = token_batch(batch=5)
    inputs = [TaggedInput(adapter, {"row": i}) for i, adapter in enumerate(["b", None, "a", "b", None])]
    calls = []

    def classify(group):
        calls.append([item.adapter for item in group])
        with torch.no_grad():
            return list(model(x[[item.fields["row"] for item in group]]).logits)

    results = run_by_adapter(model, inputs, classify)
    assert calls == [["b", "b"], [None, None], ["a"]]
    for item, result in zip(inputs, results, strict=True):
        row = item.fields["row"]
        expected = alone(setup, dirs.get(item.adapter), x[row:row + 1])
        torch.testing.assert_close(result[None], expected, rtol=0, atol=1e-5)
    assert kp.kasa_state(model).active == "a"  # restored


def test_grouped_generation_with_beam_search(setups, tmp_path):
    """Each group runs with its adapter active, so any decoding works (beam search expands the batch)."""
    setup = setups["gpt2"]
    dirs = save_task_adapters(setup, tmp_path, GPT2_TASKS)
    model = load_adapters(setup.base(), dirs)
    prompts = token_batch(batch=4, length=5)
    inputs = [TaggedInput(adapter, {"row": i}) for i, adapter in enumerate(["a", "b", None, "a"])]
    settings = {"max_new_tokens": 4, "num_beams": 2, "do_sample": False, "pad_token_id": 0}

    def generate(group):
        rows = prompts[[item.fields["row"] for item in group]]
        return list(model.generate(rows, attention_mask=torch.ones_like(rows), **settings))

    outputs = run_by_adapter(model, inputs, generate)
    for item, output in zip(inputs, outputs, strict=True):
        reference = setup.base() if item.adapter is None else kp.load_adapter(setup.base(), dirs[item.adapter])
        row = prompts[item.fields["row"]][None]
        assert torch.equal(output, reference.generate(row, attention_mask=torch.ones_like(row), **settings)[0])


def test_adapter_active_restores_the_previous_adapter(setups, tmp_path):
    model = load_adapters(setups["gpt2"].base(), save_task_adapters(setups["gpt2"], tmp_path, GPT2_TASKS))
    kp.set_adapter(model, "a")
    with adapter_active(model, "b"):
        assert kp.kasa_state(model).active == "b"
    with adapter_active(model, None):
        assert all(layer.disabled for _, layer in kp.kasa_layers(model))
    assert kp.kasa_state(model).active == "a" and not any(layer.disabled for _, layer in kp.kasa_layers(model))
