"""Each method's wiring: what is trainable, the regularization, MiLoRA's initialisation, save / load round trips."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from tiny_models import tiny_bert, tiny_gpt2, tiny_llama, token_batch
from transformers import GPT2ForSequenceClassification, LlamaForSequenceClassification

from kasa_peft.training import MethodSpec, classification_head_names, load_trained, prepare_model
from kasa_peft.training.method_names import LOW_RANK_METHODS as METHODS  # the added baselines: test_baselines.py
from kasa_peft.training.methods import METHOD_FILE

R = 4
BERT_TARGETS = 4  # query and value in 2 layers, each 32 x 32
BERT_HEAD = 32 * 2 + 2  # classifier: Linear(32, 2)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # PEFT's notes on PiSSA/AdaLoRA/KaSA


def spec(method: str, **changes) -> MethodSpec:
    return MethodSpec(**{"method": method, "r": R, "total_steps": 10, **changes})


def perturb_trainable(model: torch.nn.Module, seed: int = 3) -> None:
    """Stand-in for training: move every trainable parameter (so B != 0 and the head changes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=x).logits


EXPECTED_TRAINABLE = {  # per adapted 32 x 32 layer, then the head once
    "kasa": R * (32 + 32) + R,  # A, B, sigma
    "peft-kasa": R * (32 + 32) + R,  # lora_A, lora_B, lora_diag
    "lora": R * (32 + 32),
    "pissa": R * (32 + 32),
    "milora": R * (32 + 32),
    "dora": R * (32 + 32) + 32,  # + magnitude vector
    "adalora": round(1.5 * R) * (32 + 32) + round(1.5 * R),  # init_r = 1.5 r; lora_A, lora_B, lora_E
}


@pytest.mark.parametrize("method", METHODS)
def test_trainable_parameters(method):
    prepared = prepare_model(tiny_bert(), spec(method))
    count = prepared.trainable_parameters()
    if method == "fft":
        assert count.trainable == count.total == sum(p.numel() for p in tiny_bert().parameters())
    else:
        assert count.trainable == BERT_TARGETS * EXPECTED_TRAINABLE[method] + BERT_HEAD
    head = [p for name, p in prepared.model.named_parameters() if "classifier" in name and p.requires_grad]
    assert sum(p.numel() for p in head) == BERT_HEAD  # the head is trained by every method
    assert prepared.head_modules == ("classifier",)


@pytest.mark.parametrize("method", METHODS)
def test_regularization_only_for_kasa_methods(method):
    terms = prepare_model(tiny_bert(), spec(method)).regularization()
    assert (terms is not None) == (method in ("kasa", "peft-kasa"))


def independent_kasa_terms(model: torch.nn.Module, beta: float, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``beta * mean(sum sigma^2)`` and ``gamma * mean(||B^T B - I|| + ||A A^T - I||)`` over the adapted layers."""
    adapters = [m for m in model.modules() if type(m).__name__ == "KasaAdapter"]
    eye = torch.eye(adapters[0].sigma.numel())
    l2 = torch.stack([a.sigma.pow(2).sum() for a in adapters]).mean()
    l3 = torch.stack([torch.linalg.norm(a.B.T @ a.B - eye) + torch.linalg.norm(a.A @ a.A.T - eye)
                      for a in adapters]).mean()
    return beta * l2, gamma * l3


def test_kasa_regularization_is_the_mean_penalty_over_layers():
    prepared = prepare_model(tiny_bert(), spec("kasa", beta=0.3, gamma=0.7))
    perturb_trainable(prepared.model)
    l2, l3 = independent_kasa_terms(prepared.model, 0.3, 0.7)
    terms = prepared.regularization()
    torch.testing.assert_close(terms.singular_value, l2)
    torch.testing.assert_close(terms.orthogonality, l3)


def test_peft_kasa_terms_split_peft_loss():
    prepared = prepare_model(tiny_bert(), spec("peft-kasa", beta=0.3, gamma=0.7))
    perturb_trainable(prepared.model)
    terms = prepared.regularization()
    diags = [p for name, p in prepared.model.named_parameters() if "lora_diag" in name]
    assert len(diags) == BERT_TARGETS
    torch.testing.assert_close(terms.singular_value, 0.3 * sum(d.pow(2).sum() for d in diags))
    torch.testing.assert_close(terms.total, prepared.model.base_model._get_kasa_loss())


@pytest.mark.parametrize("method", METHODS)
def test_save_then_load_trained_reproduces_outputs(method, tmp_path):
    prepared = prepare_model(tiny_bert(), spec(method))
    perturb_trainable(prepared.model)
    x = token_batch()
    expected = logits(prepared.model, x)
    prepared.save(tmp_path)
    loaded = load_trained(tiny_bert(), tmp_path, method)
    torch.testing.assert_close(logits(loaded, x), expected, rtol=0, atol=1e-5)
    assert not torch.allclose(expected, logits(tiny_bert(), x), atol=1e-3)  # the trained weights matter


@pytest.mark.parametrize("method", ["kasa", "pissa", "milora", "lora"])
def test_round_trip_on_a_causal_lm(method, tmp_path):
    spec_llama = spec(method, target_modules=("q_proj", "k_proj", "v_proj", "up_proj", "down_proj"))
    prepared = prepare_model(tiny_llama(), spec_llama)
    perturb_trainable(prepared.model)
    x = token_batch()
    expected = logits(prepared.model, x)
    prepared.save(tmp_path)
    torch.testing.assert_close(logits(load_trained(tiny_llama(), tmp_path), x), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", ["kasa", "milora", "peft-kasa", "fft"])
def test_load_checkpoint_restores_in_place(method, tmp_path):
    trained = prepare_model(tiny_bert(), spec(method))
    perturb_trainable(trained.model)
    trained.save(tmp_path)
    fresh = prepare_model(tiny_bert(), spec(method))
    fresh.load_checkpoint(tmp_path)
    x = token_batch()
    torch.testing.assert_close(logits(fresh.model, x), logits(trained.model, x), rtol=0, atol=1e-6)


def test_an_adalora_checkpoint_restores_the_rank_allocator(tmp_path):
    """PEFT keeps AdaLoRA's importance averages in memory and saves its factors pruned to the rank pattern; a
    checkpoint must give a resumed run both, at full rank."""
    trained = prepare_model(tiny_bert(), spec("adalora", total_steps=4))
    x = token_batch()
    labels = torch.arange(x.shape[0]) % 2
    for step in range(2):  # past the warm-up (tinit = 0): the allocator has scored and masked
        trained.model(input_ids=x, labels=labels).loss.backward()
        trained.on_optimizer_step(step)
        trained.model.zero_grad()
    allocator = trained.model.base_model.rankallocator
    rank_pattern = pattern_by_layer(trained.model.peft_config["default"].rank_pattern)
    assert rank_pattern and not all(map(all, rank_pattern.values()))  # pruned: PEFT saves smaller factors
    trained.save(tmp_path)
    fresh = prepare_model(tiny_bert(), spec("adalora", total_steps=4))
    fresh.load_checkpoint(tmp_path)
    restored = fresh.model.base_model.rankallocator
    for kind in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
        expected = getattr(allocator, kind)
        assert expected and set(getattr(restored, kind)) == set(expected)
        for name, value in expected.items():
            assert torch.equal(getattr(restored, kind)[name], value), (kind, name)
    assert pattern_by_layer(fresh.model.peft_config["default"].rank_pattern) == rank_pattern
    torch.testing.assert_close(logits(fresh.model, x), logits(trained.model, x), rtol=0, atol=1e-6)


def pattern_by_layer(rank_pattern: dict) -> dict:
    """PEFT names a layer's pattern with or without the adapter name (it drops it when saving)."""
    return {key.removesuffix(".default"): value for key, value in rank_pattern.items()}


def test_load_trained_checks_the_recorded_method(tmp_path):
    prepare_model(tiny_bert(), spec("lora")).save(tmp_path)
    with pytest.raises(ValueError, match="holds a 'lora' run"):
        load_trained(tiny_bert(), tmp_path, "milora")
    (tmp_path / METHOD_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="pass the training method"):
        load_trained(tiny_bert(), tmp_path)


@pytest.mark.parametrize("factory, targets", [
    (tiny_bert, ("query", "value")),
    (tiny_llama, ("q_proj", "k_proj", "down_proj")),  # k_proj 32 -> 16 and down_proj 48 -> 32: in > out
    (tiny_gpt2, ("c_attn", "c_fc")),  # Conv1D: transposed weights
])
def test_milora_starts_from_the_original_model(factory, targets):
    x = token_batch()
    expected = logits(factory(), x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_model(factory(), spec("milora", target_modules=targets))
    torch.testing.assert_close(logits(prepared.model, x), expected, rtol=0, atol=1e-5)


def test_milora_factors_are_the_minor_singular_components():
    original = tiny_llama()
    prepared = prepare_model(tiny_llama(), spec("milora", target_modules=("q_proj", "down_proj")))
    layers = [(name, m) for name, m in prepared.model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    assert len(layers) == 4
    for name, layer in layers:
        w = original.get_submodule(name.removeprefix("base_model.model.")).weight.detach().double()
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        minor = (u[:, -R:] * s[-R:]) @ vh[-R:]
        a, b = layer.lora_A["default"].weight.double(), layer.lora_B["default"].weight.double()
        scaling = layer.scaling["default"]
        torch.testing.assert_close(scaling * b @ a, minor, rtol=0, atol=1e-5)
        # A's rows lie in the span of the minor right singular vectors, B's columns in that of the left ones
        torch.testing.assert_close(a @ vh[-R:].T @ vh[-R:], a, rtol=0, atol=1e-5)
        torch.testing.assert_close(u[:, -R:] @ u[:, -R:].T @ b, b, rtol=0, atol=1e-5)
        # and they split each singular value evenly: A A^T = B^T B = diag(S_d / s)
        halves = (s[-R:] / scaling).sort().values
        torch.testing.assert_close(torch.linalg.eigvalsh(a @ a.T), halves, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(torch.linalg.eigvalsh(b.T @ b), halves, rtol=1e-4, atol=1e-6)
        residual = layer.get_base_layer().weight.detach().double()
        torch.testing.assert_close(residual, w - minor, rtol=0, atol=1e-5)


@pytest.mark.parametrize("factory, targets", [(tiny_bert, ("query", "value")), (tiny_gpt2, ("c_attn", "c_fc"))])
def test_a_milora_run_is_a_plain_lora_of_the_original_base(factory, targets, tmp_path, monkeypatch):
    """Any LoRA runtime serves it: PEFT loads it as a rank-2r LoRA onto the untouched base, computing no SVD,
    with ``s (B A - B_0 A_0)`` in the factors."""
    prepared = prepare_model(factory(), spec("milora", target_modules=targets))
    perturb_trainable(prepared.model)
    x = token_batch()
    expected = logits(prepared.model, x)
    prepared.save(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["init_lora_weights"]) == (2 * R, 2 * 16.0, True)
    monkeypatch.setattr(torch.linalg, "svd", forbid)
    monkeypatch.setattr(torch.linalg, "eigh", forbid)
    from peft import PeftModel

    served = PeftModel.from_pretrained(factory(), str(tmp_path))
    torch.testing.assert_close(logits(served, x), expected, rtol=0, atol=1e-5)
    for name, layer in prepared.model.named_modules():
        if hasattr(layer, "lora_A") and "default" in layer.lora_A:
            saved, (a0, b0) = served.get_submodule(name), prepared.milora_init[name]
            a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            torch.testing.assert_close(saved.lora_A["default"].weight, torch.cat([a, a0]))
            torch.testing.assert_close(saved.lora_B["default"].weight, torch.cat([b, -b0], dim=1))


def forbid(*_args, **_kwargs):
    raise AssertionError("loading a MiLoRA run must not decompose any weight")


def test_classification_head_names():
    assert classification_head_names(tiny_bert()) == ("classifier",)
    assert classification_head_names(tiny_llama()) == ()
    assert classification_head_names(LlamaForSequenceClassification(tiny_llama().config)) == ("score",)
    assert classification_head_names(GPT2ForSequenceClassification(tiny_gpt2().config)) == ("score",)


def test_spec_errors_name_the_fix():
    with pytest.raises(ValueError, match="unknown method 'qlora'; choose one of kasa, lora"):
        MethodSpec(method="qlora")
    with pytest.raises(ValueError, match="needs total_steps"):
        MethodSpec(method="adalora")
    with pytest.raises(ValueError, match="MethodSpec.beta must be a finite number, got inf"):
        MethodSpec(method="peft-kasa", beta=float("inf"))
    assert MethodSpec(target_modules=["query"]).target_modules == ("query",)


def test_learn_sigma_false_fixes_sigma_at_one_and_leaves_it_untrained():
    """The ablation's first step (truncation + LoRA): sigma = 1, a buffer, not counted as trainable."""
    model = tiny_bert(num_labels=2)
    learned = prepare_model(tiny_bert(num_labels=2), MethodSpec(method="kasa", r=4)).trainable_parameters().trainable
    prepared = prepare_model(model, MethodSpec(method="kasa", r=4, learn_sigma=False))
    layers = [m for m in prepared.model.modules() if type(m).__name__ == "KasaAdapter"]
    assert layers and all(torch.equal(a.sigma, torch.ones(4)) and "sigma" in dict(a.named_buffers()) for a in layers)
    assert prepared.trainable_parameters().trainable == learned - 4 * len(layers)
