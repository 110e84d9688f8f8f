"""No silent trap: an adapted model's save_pretrained, a plain Trainer's checkpoints, and old whole-model folders."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from support import TARGETS, prompt_completion, tokenizer
from tiny_models import tiny_llama, token_batch
from training.test_methods import perturb_trainable
from transformers import AutoModelForCausalLM

from kasa_peft import KasaConfig, inject, load_adapter, save_adapter, unload
from kasa_peft.training import load_trained

CONFIG = KasaConfig(r=4, alpha=8, target_modules=TARGETS)
pytestmark = pytest.mark.filterwarnings("ignore:KaSA.s truncation", "ignore::FutureWarning",
                                        "ignore::DeprecationWarning")


def trained() -> torch.nn.Module:
    model = inject(tiny_llama(), CONFIG)
    perturb_trainable(model)
    return model


def logits(model, x):
    with torch.no_grad():
        return model.eval()(x).logits


def test_save_pretrained_writes_the_adapter_which_loads_exactly(tmp_path):
    model = trained()
    model.save_pretrained(tmp_path / "saved")
    names = {p.name for p in (tmp_path / "saved").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "kasa_peft_method.json"} == names
    x = token_batch()
    torch.testing.assert_close(logits(load_adapter(tiny_llama(), tmp_path / "saved"), x), logits(model, x),
                               rtol=0, atol=0)
    torch.testing.assert_close(logits(load_trained(tiny_llama(), tmp_path / "saved"), x), logits(model, x),
                               rtol=0, atol=0)
    with pytest.raises((OSError, KeyError)):  # transformers cannot mistake it for a whole model
        AutoModelForCausalLM.from_pretrained(tmp_path / "saved")


def test_an_unloaded_model_saves_as_transformers_does(tmp_path):
    model = unload(trained())
    model.save_pretrained(tmp_path / "plain")
    x = token_batch()
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "plain"), x),
                               logits(tiny_llama(), x), rtol=0, atol=0)


def test_a_plain_sft_trainer_writes_adapters_and_warns_about_the_regulariser(tmp_path):
    trl = pytest.importorskip("trl")
    model = inject(tiny_llama(), CONFIG)
    args = trl.SFTConfig(str(tmp_path), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2, use_cpu=True,
                         report_to="none", save_strategy="steps", save_steps=2, disable_tqdm=True, bf16=False)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=prompt_completion(), processing_class=tokenizer())
    with pytest.warns(UserWarning, match="trains without KaSA's regulariser.*KasaSFTTrainer"):
        trainer.train()
    checkpoint = tmp_path / "checkpoint-2"
    assert not any(p.name.startswith("model") for p in checkpoint.iterdir())
    x = token_batch()
    torch.testing.assert_close(logits(load_adapter(tiny_llama(), checkpoint), x), logits(model, x), rtol=0, atol=0)


def test_a_whole_adapted_model_folder_is_refused_with_a_recovery_that_works(tmp_path):
    """What save_pretrained wrote before it wrote adapters: transformers' own save of the adapted model."""
    model = trained()
    type(model).save_pretrained(model, tmp_path / "whole")
    with pytest.raises(ValueError, match=r"holds a whole KaSA-adapted model .*'\.\.\.adapters\.default\.A'.*"
                                         r"Recover the adapter.*kasa_peft\.save_adapter\(model, NEW_DIR\)"):
        load_adapter(tiny_llama(), tmp_path / "whole")
    recovered = inject(tiny_llama(), CONFIG, adapter_name="default")  # the recovery the message gives
    for file in sorted((tmp_path / "whole").glob("*.safetensors")):
        recovered.load_state_dict(load_file(file), strict=False)
    save_adapter(recovered, tmp_path / "adapter")
    x = token_batch()
    torch.testing.assert_close(logits(load_adapter(tiny_llama(), tmp_path / "adapter"), x), logits(model, x),
                               rtol=0, atol=0)
