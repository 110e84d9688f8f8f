"""KasaTrainer: the regularized loss and its logging, head_lr groups, AdaLoRA's allocator, checkpoints, resume."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_bert, tiny_llama, token_batch
from transformers import TrainerCallback, TrainingArguments

from kasa_peft import read_adapter
from kasa_peft.training import KasaTrainer, MethodSpec, load_trained, prepare_model

from .test_methods import independent_kasa_terms, logits, perturb_trainable

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

BETA, GAMMA = 0.05, 0.02  # large enough for the penalties to show in the logs


def examples(n: int = 12, causal: bool = False) -> list[dict]:
    """Classification examples (label from the first token), or language-modelling ones (labels = inputs)."""
    ids = token_batch(n, 7, seed=5)
    return [{"input_ids": ids[i], "labels": ids[i] if causal else torch.tensor(int(ids[i, 0]) % 2)} for i in range(n)]


def make_trainer(output_dir, method: str = "kasa", head_lr: float | None = None, dropout_off: bool = False,
                 callbacks=(), eval_dataset=None, causal: bool = False, **arguments) -> KasaTrainer:
    model = tiny_llama() if causal else tiny_bert()
    if dropout_off:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    targets = ("q_proj", "v_proj") if causal else ("query", "value")
    prepared = prepare_model(model, MethodSpec(method=method, r=4, beta=BETA, gamma=GAMMA, total_steps=6,
                                               target_modules=targets))
    settings = dict(per_device_train_batch_size=4, max_steps=6, learning_rate=1e-2, logging_steps=1,
                    save_strategy="no", use_cpu=True, report_to="none", disable_tqdm=True, seed=7)
    args = TrainingArguments(str(output_dir), **{**settings, **arguments})
    return KasaTrainer(prepared=prepared, args=args, train_dataset=examples(causal=causal), eval_dataset=eval_dataset,
                       head_lr=head_lr, callbacks=list(callbacks))


def batch(n: int = 4) -> dict[str, torch.Tensor]:
    data = examples(n)
    return {key: torch.stack([d[key] for d in data]) for key in ("input_ids", "labels")}


def adapter_state(trainer: KasaTrainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def training_logs(trainer: KasaTrainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.parametrize("method", ["kasa", "peft-kasa"])
def test_training_loss_is_task_loss_plus_regularization(method, tmp_path):
    trainer = make_trainer(tmp_path, method)
    model = trainer.model
    perturb_trainable(model)
    inputs = batch()
    torch.manual_seed(0)
    loss = trainer.compute_loss(model.train(), inputs)
    torch.manual_seed(0)  # the same dropout masks
    task_loss = model(**inputs).loss
    if method == "kasa":
        penalty = sum(independent_kasa_terms(model, BETA, GAMMA))
    else:
        penalty = model.base_model._get_kasa_loss()
    torch.testing.assert_close(loss, task_loss + penalty)
    assert penalty > 1e-3
    eval_loss = trainer.compute_loss(model.eval(), inputs)
    torch.testing.assert_close(eval_loss, model(**inputs).loss)  # evaluation: the task loss alone


def test_logs_the_three_terms_averaged_like_the_loss(tmp_path):
    every_step = make_trainer(tmp_path / "a")
    initial = independent_kasa_terms(every_step.model, BETA, GAMMA)
    every_step.train()
    every_other = make_trainer(tmp_path / "b", logging_steps=2)
    every_other.train()
    steps, pairs = training_logs(every_step), training_logs(every_other)
    assert len(steps) == 6 and len(pairs) == 3
    for entry in steps + pairs:
        assert entry["loss"] == pytest.approx(entry["task_loss"] + entry["reg_l2"] + entry["reg_l3"], rel=1e-5)
    assert steps[0]["reg_l2"] == pytest.approx(initial[0].item(), rel=1e-5)
    assert steps[0]["reg_l3"] == pytest.approx(initial[1].item(), rel=1e-5)
    for i, entry in enumerate(pairs):
        for key in ("loss", "task_loss", "reg_l2", "reg_l3"):
            assert entry[key] == pytest.approx((steps[2 * i][key] + steps[2 * i + 1][key]) / 2, rel=1e-5)


@pytest.mark.parametrize("causal", [False, True], ids=["classifier", "causal-lm"])
def test_gradient_accumulation_matches_the_full_batch(causal, tmp_path):
    """A classifier's loss is a per-batch mean; a causal LM's is normalised over the accumulated tokens."""
    full = make_trainer(tmp_path / "full", dropout_off=True, causal=causal, max_steps=3)
    full.train()
    accumulated = make_trainer(tmp_path / "acc", dropout_off=True, causal=causal, max_steps=3,
                               per_device_train_batch_size=2, gradient_accumulation_steps=2)
    accumulated.train()
    for name, value in adapter_state(full).items():
        torch.testing.assert_close(adapter_state(accumulated)[name], value, rtol=0, atol=1e-5)
    for a, b in zip(training_logs(full), training_logs(accumulated), strict=True):
        for key in ("loss", "task_loss", "reg_l2", "reg_l3"):
            assert b[key] == pytest.approx(a[key], rel=1e-4)


@pytest.mark.parametrize("method, head_suffix", [("kasa", "classifier.copies.default"),
                                                 ("lora", "classifier.modules_to_save.default")])
def test_head_and_adapter_param_groups(method, head_suffix, tmp_path):
    trainer = make_trainer(tmp_path, method, head_lr=3e-2, learning_rate=1e-3, weight_decay=0.1)
    optimizer = trainer.create_optimizer()
    named = {id(p): n for n, p in trainer.model.named_parameters()}
    grouped = [(g["name"], g["lr"], g["weight_decay"], named[id(p)])
               for g in optimizer.param_groups for p in g["params"]]
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert sorted(n for *_, n in grouped) == sorted(trainable)  # each trainable parameter exactly once
    for part, lr, decay, name in grouped:
        is_head = f"{head_suffix}." in name
        assert part == ("head" if is_head else "adapter")
        assert lr == (3e-2 if is_head else 1e-3)
        assert decay == (0.0 if name.endswith("bias") else 0.1)
    assert {part for part, *_ in grouped} == {"head", "adapter"}


def test_adalora_allocates_ranks_after_each_optimizer_step(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, "adalora")
    peft_model = trainer.model.base_model
    allocate = peft_model.update_and_allocate
    calls = []

    def spy(global_step):
        grads = [p.grad for n, p in trainer.model.named_parameters() if "lora_A" in n]
        calls.append((global_step, all(g is not None for g in grads)))
        allocate(global_step)

    monkeypatch.setattr(peft_model, "update_and_allocate", spy)
    trainer.train()
    assert calls == [(step, True) for step in range(6)]
    assert trainer.model.peft_config["default"].rank_pattern  # the allocator fixed a budget
    x = token_batch()
    expected = logits(trainer.model, x)
    trainer.prepared.save(tmp_path / "final")
    torch.testing.assert_close(logits(load_trained(tiny_bert(), tmp_path / "final"), x), expected, rtol=0, atol=1e-5)


def test_checkpoints_hold_the_adapter_not_the_base(tmp_path):
    trainer = make_trainer(tmp_path, save_strategy="steps", save_steps=3)
    trainer.train()
    checkpoint = tmp_path / "checkpoint-3"
    files = {p.name for p in checkpoint.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "optimizer.pt", "rng_state.pth"} <= files
    assert not files & {"model.safetensors", "pytorch_model.bin"}
    metadata, tensors = read_adapter(tmp_path / "checkpoint-6")
    final = trainer.model.get_submodule("bert.encoder.layer.0.attention.self.query").adapters["default"]
    torch.testing.assert_close(tensors["bert.encoder.layer.0.attention.self.query.sigma"], final.sigma.detach())


class StopAt(TrainerCallback):
    """Interrupts training after ``step`` optimizer steps (once the checkpoint of that step is written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def record_training_batches(model: torch.nn.Module) -> list[list[int]]:
    """The first tokens of every batch the model trains on, in order (to check the data order)."""
    seen: list[list[int]] = []

    def hook(module, args, kwargs):
        if module.training:
            seen.append(kwargs["input_ids"][:, 0].tolist())

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


@pytest.mark.parametrize("method, stop", [("kasa", 5), ("lora", 5), ("milora", 5),
                                          ("adalora", 2), ("adalora", 5)])  # before / after its final ranks
def test_resume_reaches_the_uninterrupted_adapter(method, stop, tmp_path):
    """7 steps over 3 batches an epoch, interrupted after step ``stop`` (base-model dropout 0.1 stays on)."""
    settings = dict(max_steps=7, save_strategy="steps", save_steps=stop)

    def run(output_dir, stop=None, resume=None):
        trainer = make_trainer(output_dir, method, callbacks=[StopAt(stop)] if stop else [], **settings)
        seen = record_training_batches(trainer.model)
        trainer.train(resume_from_checkpoint=resume)
        return trainer, seen

    uninterrupted, order = run(tmp_path / "full")
    first, order_first = run(tmp_path / "cut", stop=stop)
    assert first.state.global_step == stop and (tmp_path / "cut" / f"checkpoint-{stop}").is_dir()
    resumed, order_resumed = run(tmp_path / "cut", resume=str(tmp_path / "cut" / f"checkpoint-{stop}"))
    assert order_first + order_resumed == order  # same data order, the consumed batches skipped
    assert order[:3] != order[3:6]  # and it is shuffled per epoch
    expected = adapter_state(uninterrupted)
    assert not torch.allclose(adapter_state(first)[next(iter(expected))], expected[next(iter(expected))])
    for name, value in adapter_state(resumed).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6)


def test_load_best_model_at_end_restores_the_best_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, eval_dataset=examples(8), eval_strategy="steps", eval_steps=2,
                           save_strategy="steps", save_steps=2, load_best_model_at_end=True,
                           metric_for_best_model="loss", greater_is_better=False)
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None
    _, tensors = read_adapter(best)
    layer = trainer.model.get_submodule("bert.encoder.layer.1.attention.self.value").adapters["default"]
    torch.testing.assert_close(layer.B.detach(), tensors["bert.encoder.layer.1.attention.self.value.B"])
    eval_losses = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
    assert trainer.state.best_metric == min(eval_losses)
