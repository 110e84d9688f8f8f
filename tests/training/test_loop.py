"""The own-loop helpers: `kasa_loss` and `param_groups`."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_bert, tiny_llama, token_batch

from kasa_peft import KasaConfig, inject
from kasa_peft.training import MethodSpec, kasa_loss, param_groups, prepare_model

from .test_methods import independent_kasa_terms, perturb_trainable

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def grouped_names(model: torch.nn.Module, groups: list[dict]) -> dict[str, tuple[str, float, float]]:
    """Parameter name -> (group name, lr, weight decay); fails if a parameter is in two groups."""
    names = {id(p): n for n, p in model.named_parameters()}
    result = {}
    for group in groups:
        for param in group["params"]:
            assert names[id(param)] not in result
            result[names[id(param)]] = (group["name"], group["lr"], group["weight_decay"])
    return result


def test_kasa_loss_adds_the_penalty():
    model = inject(tiny_bert(), KasaConfig(r=4, beta=0.2, gamma=0.1))
    perturb_trainable(model)
    x = token_batch()
    task_loss = model.eval()(input_ids=x, labels=torch.tensor([0, 1, 1])).loss
    expected = task_loss + sum(independent_kasa_terms(model, 0.2, 0.1))
    torch.testing.assert_close(kasa_loss(model, task_loss), expected)


def test_param_groups_split_head_and_adapter():
    model = inject(tiny_bert(), KasaConfig(r=4, modules_to_save=("classifier",)))
    groups = grouped_names(model, param_groups(model, lr=1e-3, head_lr=1e-2, weight_decay=0.1))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(groups) == trainable  # frozen parameters are left out
    assert groups["classifier.copies.default.weight"] == ("head", 1e-2, 0.1)
    assert groups["classifier.copies.default.bias"] == ("head", 1e-2, 0.0)  # no decay on biases
    assert groups["bert.encoder.layer.0.attention.self.query.adapters.default.sigma"] == ("adapter", 1e-3, 0.1)
    assert sum(name == "head" for name, *_ in groups.values()) == 2


def test_param_groups_without_head_lr_use_lr_everywhere():
    model = inject(tiny_bert(), KasaConfig(r=4, modules_to_save=("classifier",)))
    groups = param_groups(model, lr=5e-4)
    assert {g["lr"] for g in groups} == {5e-4} and {g["name"] for g in groups} == {"head", "adapter"}


def test_param_groups_find_a_peft_classifier_head():
    prepared = prepare_model(tiny_bert(), MethodSpec(method="lora", r=4))
    groups = grouped_names(prepared.model, param_groups(prepared.model, lr=1e-3, head_lr=1e-2))
    heads = {n for n, (name, *_) in groups.items() if name == "head"}
    assert heads == {"base_model.model.classifier.modules_to_save.default.weight",
                     "base_model.model.classifier.modules_to_save.default.bias"}


def test_a_causal_lm_has_no_head_group():
    model = inject(tiny_llama(), KasaConfig(r=4, target_modules=("q_proj",)))
    assert {g["name"] for g in param_groups(model, lr=1e-3, head_lr=1e-2)} == {"adapter"}


def test_an_own_loop_step_trains_on_the_regularized_loss():
    """One AdamW step on ``kasa_loss`` moves sigma against the gradient of ``task + beta L2 + gamma L3``."""
    model = inject(tiny_bert(), KasaConfig(r=4, beta=0.5, modules_to_save=("classifier",)))
    optimizer = torch.optim.SGD(param_groups(model, lr=0.1, head_lr=0.0))
    sigma = model.bert.encoder.layer[0].attention.self.query.adapters["default"].sigma
    before = sigma.detach().clone()
    # B = 0, so the task loss has no gradient on sigma
    task_loss = model.eval()(input_ids=token_batch(), labels=torch.tensor([0, 1, 1])).loss
    kasa_loss(model, task_loss).backward()
    optimizer.step()
    layers = 4  # mean over the adapted layers: d(beta * mean sum sigma^2)/d sigma = 2 beta sigma / layers
    torch.testing.assert_close(sigma.detach(), before - 0.1 * 2 * 0.5 * before / layers)
    head = model.classifier.copies["default"].weight
    assert head.grad is not None and torch.equal(head.detach(), model.classifier.original.weight.detach())
