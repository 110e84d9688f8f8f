"""KasaSFTTrainer and KasaDPOTrainer: TRL's trainers with KaSA's loss, checkpoints and DPO reference."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
import transformers
from core.helpers import truncated_copy
from support import PAIRS, TARGETS, messages, preferences, prompt_completion, save_tiny_model, text, tokenizer
from tiny_models import tiny_llama, token_batch
from training.test_methods import independent_kasa_terms, perturb_trainable
from training.test_trainer import StopAt

import kasa_peft
from kasa_peft import KasaConfig, inject, load_adapter, regularization_loss, save_adapter
from kasa_peft.training.trainer import KasaTrainerMixin

trl = pytest.importorskip("trl")
from kasa_peft.integrations.trl import KasaDPOTrainer, KasaSFTTrainer  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning"), pytest.mark.timeout(300)]

BETA, GAMMA = 0.05, 0.02
CONFIG = KasaConfig(r=4, target_modules=TARGETS, beta=BETA, gamma=GAMMA)
TOKENIZER = tokenizer()
COMMON = dict(per_device_train_batch_size=4, max_steps=3, learning_rate=1e-2, logging_steps=1, save_strategy="no",
              use_cpu=True, report_to="none", disable_tqdm=True, seed=7, bf16=False)


def sft(output_dir, model=None, dataset=None, kasa_config=CONFIG, trainer_class=None, callbacks=(),
        **arguments) -> KasaSFTTrainer:
    args = trl.SFTConfig(str(output_dir), **{**COMMON, **arguments})
    model = tiny_llama() if model is None else model
    dataset = prompt_completion() if dataset is None else dataset
    if trainer_class is not None:  # a class of the user's: the model comes adapted
        return trainer_class(model=model, args=args, train_dataset=dataset, processing_class=TOKENIZER)
    return KasaSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=TOKENIZER,
                          kasa_config=kasa_config, callbacks=list(callbacks))


def dpo(output_dir, model, kasa_config=None, **arguments) -> KasaDPOTrainer:
    settings = {**COMMON, "max_steps": 2, "learning_rate": 1e-3, **arguments}
    args = trl.DPOConfig(str(output_dir), **settings)
    return KasaDPOTrainer(model=model, args=args, train_dataset=preferences(), processing_class=TOKENIZER,
                          kasa_config=kasa_config)


def adapted(seed: int = 3, config: KasaConfig = CONFIG) -> torch.nn.Module:
    """tiny_llama with a KaSA adapter that looks trained (B != 0): an SFT result to continue."""
    model = inject(tiny_llama(), config)
    perturb_trainable(model, seed)
    return model


def policy_adapters(model) -> torch.nn.Module:
    """The trained adapter's layers only (`independent_kasa_terms` reads every KasaAdapter module it is given)."""
    return torch.nn.ModuleList(m for name, m in model.named_modules() if name.endswith("adapters.default"))


def first_batch(trainer) -> dict[str, torch.Tensor]:
    return next(iter(trainer.get_train_dataloader()))


def training_logs(trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def logits(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x).logits


def completion_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over completion tokens of log p(token | prefix), per row, from the model's plain logits."""
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = out[:, :-1].log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    return (logp * batch["completion_mask"][:, 1:]).sum(-1)


# --- the loss ------------------------------------------------------------------------------------------------------


def test_sft_loss_on_a_fixed_batch_is_the_task_loss_plus_the_regulariser(tmp_path):
    trainer = sft(tmp_path)
    model = trainer.model
    perturb_trainable(model)
    batch = first_batch(trainer)
    loss = trainer.compute_loss(model.train(), dict(batch))
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    task = F.cross_entropy(out[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)
    assert (batch["labels"] == -100).any() and (batch["labels"] != -100).any()  # completion-only: prompts masked
    penalty = sum(independent_kasa_terms(model, BETA, GAMMA))
    torch.testing.assert_close(loss, task + penalty)
    torch.testing.assert_close(penalty, regularization_loss(model))
    assert penalty > 1e-2


def test_the_three_terms_are_logged_and_sum_to_the_loss(tmp_path):
    trainer = sft(tmp_path)
    initial = independent_kasa_terms(trainer.model, BETA, GAMMA)
    trainer.train()
    logs = training_logs(trainer)
    assert len(logs) == 3
    for entry in logs:
        assert entry["loss"] == pytest.approx(entry["task_loss"] + entry["reg_l2"] + entry["reg_l3"], rel=1e-5)
    assert logs[0]["reg_l2"] == pytest.approx(initial[0].item(), rel=1e-5)
    assert logs[0]["reg_l3"] == pytest.approx(initial[1].item(), rel=1e-5)


def test_dpo_loss_on_a_fixed_batch_is_the_dpo_loss_plus_the_regulariser(tmp_path):
    """Reference: an independent copy of the model as the trainer got it; policy: the model moved since."""
    model = adapted()
    start = copy.deepcopy(model)
    trainer = dpo(tmp_path, model)
    perturb_trainable(model, seed=11)  # stand-in for training steps
    batch = first_batch(trainer)
    loss = trainer.compute_loss(model.train(), dict(batch))
    policy, reference = completion_logps(model.eval(), batch), completion_logps(start.eval(), batch)
    chosen, rejected = (policy - reference).chunk(2)
    dpo_loss = -F.logsigmoid(trainer.args.beta * (chosen - rejected)).mean()
    penalty = sum(independent_kasa_terms(policy_adapters(model), BETA, GAMMA))  # the frozen reference copy not in it
    torch.testing.assert_close(loss, dpo_loss + penalty, rtol=1e-5, atol=1e-5)
    assert abs(dpo_loss.item() - math.log(2)) > 1e-3  # the policy has moved away from the reference


# --- DPO's reference -------------------------------------------------------------------------------------------------


@pytest.fixture
def no_model_loading(monkeypatch):
    """Loading any model from disk or the hub fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded with from_pretrained")
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(trl.trainer.dpo_trainer, "create_model_from_path", refuse)


@pytest.mark.parametrize("start", ["fresh", "continued"])
def test_dpo_starts_at_ln2_without_loading_a_model(start, tmp_path, no_model_loading):
    """Fresh: the paper's truncation (d = r) with B = 0; continued: an SFT-like adapter with B != 0."""
    if start == "fresh":
        trainer = dpo(tmp_path, tiny_llama(), kasa_config=KasaConfig(r=4, target_modules=TARGETS, beta=0, gamma=0))
    else:
        trainer = dpo(tmp_path, adapted(config=CONFIG.replace(beta=0, gamma=0)))
    trainer.train()
    first = training_logs(trainer)[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["task_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert training_logs(trainer)[-1]["loss"] != pytest.approx(math.log(2), abs=1e-5)  # and then it trains


def test_a_fresh_adapters_reference_is_the_truncated_base_not_the_original(tmp_path):
    trainer = dpo(tmp_path, tiny_llama(), kasa_config=CONFIG)
    x = token_batch()
    with torch.no_grad():
        reference = trainer.ref_model(input_ids=x).logits
    torch.testing.assert_close(reference, logits(truncated_copy(tiny_llama(), TARGETS, 4), x), rtol=0, atol=1e-5)
    assert (reference - logits(tiny_llama(), x)).abs().max() > 1e-3


def test_precomputed_reference_log_probs_are_the_references_in_any_adapter_state(tmp_path):
    model = adapted()
    start = copy.deepcopy(model)
    trainer = dpo(tmp_path, model, precompute_ref_log_probs=True, learning_rate=5e-2)
    batch = first_batch(trainer)
    expected = completion_logps(start.eval(), batch).chunk(2)
    torch.testing.assert_close(batch["ref_chosen_logps"], expected[0], rtol=0, atol=1e-4)
    torch.testing.assert_close(batch["ref_rejected_logps"], expected[1], rtol=0, atol=1e-4)
    trainer.train()
    assert (completion_logps(model.eval(), batch) - completion_logps(start.eval(), batch)).abs().max() > 1e-3
    again = trainer.compute_ref_log_probs(trainer.ref_model, batch)  # what evaluate() precomputes now
    for value, reference in zip(again, expected, strict=True):
        torch.testing.assert_close(value, reference, rtol=0, atol=1e-4)


# --- checkpoints, resume, saved model ------------------------------------------------------------------------------


def adapter_bytes(directory) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.name.startswith("adapter_"))


@pytest.mark.parametrize("setting", ["completion_only", "packing", "messages"])
def test_save_model_and_load_adapter_give_the_trained_logits(setting, tmp_path):
    dataset = {"completion_only": prompt_completion(), "packing": text(), "messages": messages()}[setting]
    extra = {"packing": dict(packing=True, max_length=32)}.get(setting, {})
    trainer = sft(tmp_path, dataset=dataset, **extra)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    x = token_batch()
    expected = logits(trainer.model, x)
    assert (expected - logits(tiny_llama(), x)).abs().max() > 1e-3
    loaded = load_adapter(tiny_llama(), tmp_path / "final")
    torch.testing.assert_close(logits(loaded, x), expected, rtol=0, atol=0)
    save_adapter(trainer.model, tmp_path / "reference")
    assert adapter_bytes(tmp_path / "final") <= 2 * adapter_bytes(tmp_path / "reference")


@pytest.mark.parametrize("setting", ["completion_only", "packing"])
def test_checkpoints_are_adapters_and_resuming_is_bit_exact(setting, tmp_path):
    packing = setting == "packing"
    dataset, extra = (text(24), dict(packing=True, max_length=32)) if packing else (prompt_completion(24), {})
    settings = dict(max_steps=5, save_strategy="steps", save_steps=2, **extra)

    def run(directory, stop=None, resume=None):
        trainer = sft(directory, dataset=dataset, callbacks=[StopAt(stop)] if stop else [], **settings)
        trainer.train(resume_from_checkpoint=resume)
        return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}

    full = run(tmp_path / "full")
    run(tmp_path / "cut", stop=2)
    checkpoint = tmp_path / "cut" / "checkpoint-2"
    files = {p.name for p in checkpoint.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "kasa_peft_method.json", "optimizer.pt"} <= files
    assert not any(name.startswith(("model", "pytorch_model")) for name in files)
    save_adapter(inject(tiny_llama(), CONFIG), tmp_path / "reference")
    assert adapter_bytes(checkpoint) <= 2 * adapter_bytes(tmp_path / "reference")
    resumed = run(tmp_path / "cut", resume=str(checkpoint))
    for name, value in full.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0)


def test_the_saved_folder_is_read_by_export_and_load_trained(tmp_path):
    from kasa_peft.interop.cli_commands import export_command
    from kasa_peft.training import load_trained

    trainer = sft(tmp_path)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    x = token_batch()
    torch.testing.assert_close(logits(load_trained(tiny_llama(), tmp_path / "final"), x), logits(trainer.model, x),
                               rtol=0, atol=0)
    exported = export_command(tmp_path / "final", "lora", tmp_path / "lora")
    assert (exported / "adapter_config.json").is_file()


def test_eval_run_reads_the_saved_folder_as_eval_adapter_does(tmp_path, capsys):
    """A trainer's output folder has no run record of `kasa-peft train`: `eval --run` evaluates its adapter, exactly
    as `eval --adapter` does with the same base and task, and without --task it says what is missing."""
    import json

    from pipelines.helpers import run_cli

    trainer = sft(tmp_path)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    base = save_tiny_model(tmp_path / "base")
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in PAIRS[:2]))
    common = ("--model", base, "--task", "sft", "--train-file", eval_file, "--eval-file", eval_file,
              "--max-new-tokens", 4)
    capsys.readouterr()  # what training printed
    by_run = run_cli(capsys, "eval", "--run", tmp_path / "final", *common)
    by_adapter = run_cli(capsys, "eval", "--adapter", tmp_path / "final", *common)
    assert by_run.code == by_adapter.code == 0, by_run.err + by_adapter.err
    assert json.loads(by_run.out) == json.loads(by_adapter.out)
    missing = run_cli(capsys, "eval", "--run", tmp_path / "final", "--model", base)
    assert missing.code != 0 and "needs --task" in missing.err

# --- composing and bad input ---------------------------------------------------------------------------------------


class ReversedOrder(trl.SFTTrainer, KasaTrainerMixin):
    pass


class MixinFirst(KasaTrainerMixin, trl.SFTTrainer):
    pass


@pytest.mark.parametrize("trainer_class", [MixinFirst, ReversedOrder])
def test_the_mixin_adds_the_regulariser_in_either_base_class_order(trainer_class, tmp_path):
    ours = sft(tmp_path / "ours", model=adapted(), kasa_config=None)
    theirs = sft(tmp_path / "theirs", model=adapted(), trainer_class=trainer_class)
    batch = first_batch(ours)
    expected = ours.compute_loss(ours.model.train(), dict(batch))
    torch.testing.assert_close(theirs.compute_loss(theirs.model.train(), dict(batch)), expected)
    theirs.train()
    assert {"task_loss", "reg_l2", "reg_l3"} <= set(training_logs(theirs)[0])
    theirs.save_model(str(tmp_path / "final"))
    assert (tmp_path / "final" / "adapter_model.safetensors").is_file()


def two_adapters() -> torch.nn.Module:
    model = inject(tiny_llama(), CONFIG)
    return inject(model, CONFIG, adapter_name="other")


@pytest.mark.parametrize("case, make, kwargs, message", [
    ("no adapter", tiny_llama, {}, "has no KaSA adapter: adapt it first with kasa_peft.inject"),
    ("two adapters", two_adapters, {}, r"holds the KaSA adapters \['default', 'other'\].*delete_adapter"),
    ("config and adapter", adapted, {"kasa_config": CONFIG}, "got kasa_config and a model that already has"),
    ("path without config", lambda: "some/model", {}, "no kasa_config"),
])
@pytest.mark.parametrize("trainer_class", [KasaSFTTrainer, KasaDPOTrainer])
def test_bad_input_is_one_clear_error_and_nothing_is_written(trainer_class, case, make, kwargs, message, tmp_path):
    model = make()
    dataset = preferences() if trainer_class is KasaDPOTrainer else prompt_completion()
    config_class = trl.DPOConfig if trainer_class is KasaDPOTrainer else trl.SFTConfig
    with pytest.raises(ValueError, match=message):
        trainer_class(model=model, args=config_class(str(tmp_path / "out"), **COMMON), train_dataset=dataset,
                      processing_class=TOKENIZER, **kwargs)
    assert not (tmp_path / "out").exists()
    if not isinstance(model, str) and case != "no adapter":
        assert len(kasa_peft.kasa_state(model).configs) == (2 if case == "two adapters" else 1)


def test_a_ref_model_is_refused_saying_what_is_used(tmp_path):
    with pytest.raises(ValueError, match="its reference is the KaSA policy as it starts.*Leave ref_model out"):
        KasaDPOTrainer(model=adapted(), ref_model=tiny_llama(), args=trl.DPOConfig(str(tmp_path / "out"), **COMMON),
                       train_dataset=preferences(), processing_class=TOKENIZER)
    assert not (tmp_path / "out").exists()


def test_a_peft_config_is_refused(tmp_path):
    peft = pytest.importorskip("peft")
    with pytest.raises(ValueError, match="pass kasa_config=kasa_peft.KasaConfig"):
        KasaSFTTrainer(model=tiny_llama(), args=trl.SFTConfig(str(tmp_path / "out"), **COMMON),
                       train_dataset=prompt_completion(), processing_class=TOKENIZER,
                       peft_config=peft.LoraConfig(r=4), kasa_config=CONFIG)
    assert not (tmp_path / "out").exists()


def test_a_failed_construction_leaves_the_model_as_it_was(tmp_path):
    model = tiny_llama()
    with pytest.raises(TypeError):
        KasaSFTTrainer(model=model, args=trl.SFTConfig(str(tmp_path / "out"), **COMMON), train_dataset=[1, 2],
                       processing_class=TOKENIZER, kasa_config=CONFIG)
    assert not hasattr(model, "_kasa_state") and not list(kasa_peft.kasa_layers(model))
    continued = adapted()
    with pytest.raises(TypeError):
        KasaDPOTrainer(model=continued, args=trl.DPOConfig(str(tmp_path / "out"), **COMMON), train_dataset=[1, 2],
                       processing_class=TOKENIZER)
    assert list(kasa_peft.kasa_state(continued).configs) == ["default"]
    trainable = [n for n, p in continued.named_parameters() if p.requires_grad]
    assert trainable and all(".adapters.default." in n for n in trainable)


def test_trls_defaults_bf16_autocast_and_gradient_checkpointing_train_every_adapter_parameter(tmp_path):
    args = trl.SFTConfig(str(tmp_path), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2, use_cpu=True,
                         report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=1)
    assert args.bf16 and args.gradient_checkpointing  # TRL's defaults, left as they are
    trainer = KasaSFTTrainer(model=tiny_llama(), args=args, train_dataset=prompt_completion(),
                             processing_class=TOKENIZER, kasa_config=CONFIG)
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    for name, param in trainer.model.named_parameters():
        if name in start:
            assert param.dtype == torch.float32 and not torch.equal(param, start[name]), name
    assert {"task_loss", "reg_l2", "reg_l3"} <= set(training_logs(trainer)[0])


def test_a_model_path_with_kasa_config_is_loaded_as_trl_loads_it(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    trainer = KasaSFTTrainer(model=str(model_dir), args=trl.SFTConfig(str(tmp_path / "out"), **COMMON),
                             train_dataset=prompt_completion(), kasa_config=CONFIG)  # the tokenizer from the path too
    assert kasa_peft.target_layer_names(tiny_llama(), CONFIG) == [n for n, _ in kasa_peft.kasa_layers(trainer.model)]
    trainer.train()
    trainer.save_model()
    x = token_batch()
    torch.testing.assert_close(logits(load_adapter(tiny_llama(), tmp_path / "out"), x), logits(trainer.model, x),
                               rtol=0, atol=0)
