"""The KaSA paper's other baselines: their equations, trainable-parameter counts (each paper's formula evaluated
by hand for the tiny models' sizes), refusals, save / load round trips and resumed training."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import VOCAB, tiny_bert, tiny_gpt2, tiny_llama, token_batch
from transformers import BertConfig, BertForSequenceClassification

from kasa_peft.training import MethodSpec, load_trained, prepare_model
from kasa_peft.training.baselines import WEIGHTS_FILE
from kasa_peft.training.baselines.bottleneck import ADAPTER, BottleneckAdapter, attach
from kasa_peft.training.baselines.dylora import DyLoraFactors, RankSchedule
from kasa_peft.training.baselines.placement import attention_output, mlp_module, mlp_output, transformer_blocks
from kasa_peft.training.method_names import BASELINES

from .test_methods import logits, perturb_trainable

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

M = 4  # bottleneck size / rank / prefix length (the spec's r)
D, INTER, LAYERS = 32, 48, 2  # tiny_bert and tiny_llama: hidden size, MLP width, blocks
BERT_HEAD = D * 2 + 2
ADAPTER_WITH_BIASES = 2 * M * D + D + M  # Houlsby et al. 2019: 2md + d + m per adapter
BERT_ON_BERT = ("query", "value")
LLAMA_TARGETS = ("q_proj", "v_proj")
BERT_METHODS = tuple(m for m in BASELINES if m not in ("prefix", "parallel"))  # what a BERT classifier takes
LLAMA_METHODS = tuple(m for m in BASELINES if m != "bitfit")  # what a Llama causal LM takes


def spec(method: str, targets=BERT_ON_BERT, **changes) -> MethodSpec:
    return MethodSpec(method=method, r=M, target_modules=targets, **changes)


def bert_with(layers: int) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=INTER, max_position_embeddings=64, num_labels=2)
    return BertForSequenceClassification(config).eval()


def trainable(model: torch.nn.Module) -> dict[str, int]:
    return {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}


# ------------------------------------------------------------------------------------------------ placement


@pytest.mark.parametrize("make, blocks, attention, mlp", [
    (tiny_bert, "bert.encoder.layer", "attention.output.dense", "output.dense"),
    (tiny_llama, "model.layers", "self_attn.o_proj", "mlp.down_proj"),
    (tiny_gpt2, "transformer.h", "attn.c_proj", "mlp.c_proj"),
])
def test_placement_finds_the_attention_and_mlp_outputs(make, blocks, attention, mlp):
    name, found = transformer_blocks(make())
    assert name == blocks and len(found) == LAYERS
    assert (attention_output(found[0]), mlp_output(found[0])) == (attention, mlp)


def test_the_mlp_as_one_module_exists_in_llama_not_in_bert():
    assert mlp_module(tiny_llama().model.layers[0]) == "mlp"
    with pytest.raises(ValueError, match="splits its MLP over intermediate, output"):
        mlp_module(tiny_bert().bert.encoder.layer[0])


# ---------------------------------------------------------------------------------------- adapter equations


def randomise(module: torch.nn.Module, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))


@pytest.mark.parametrize("parallel", [False, True])
def test_bottleneck_adapter_series_and_parallel_equations(parallel):
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 5)
    x = torch.randn(3, 6)
    base = layer(x).detach()
    adapter = BottleneckAdapter(6 if parallel else 5, 2, "relu", out_dim=5)
    assert torch.count_nonzero(adapter.up.weight) == 0  # W_up starts at zero: the adapted layer is the base
    attach(layer, adapter, parallel=parallel)
    torch.testing.assert_close(layer(x), base)
    randomise(adapter)
    h = x if parallel else base
    delta = torch.relu(h @ adapter.down.weight.T + adapter.down.bias) @ adapter.up.weight.T + adapter.up.bias
    torch.testing.assert_close(layer(x), base + delta)


def test_lin_adapter_normalises_its_input_first():
    adapter = BottleneckAdapter(5, 2, "relu", layer_norm=True)
    randomise(adapter)
    h = torch.randn(3, 5)
    normed = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-5)
    normed = normed * adapter.norm.weight + adapter.norm.bias
    expected = torch.relu(normed @ adapter.down.weight.T + adapter.down.bias) @ adapter.up.weight.T + adapter.up.bias
    torch.testing.assert_close(adapter(h), expected)


NORMS_BERT = (2 * LAYERS + 1) * 2 * D  # two LayerNorms a block and the embeddings', weight and bias
NORMS_LLAMA = (2 * LAYERS + 1) * D  # two RMSNorms a block and the final one, weight only
EXPECTED_BERT = {
    # BitFit: q, k, v, attention output, intermediate, output and two LayerNorm biases a block, the embeddings'
    # LayerNorm and the pooler; the head's bias is part of the head
    "bitfit": LAYERS * (3 * D + D + D + INTER + D + D) + D + D,
    "adapter-h": 2 * LAYERS * ADAPTER_WITH_BIASES + NORMS_BERT,
    "adapter-p": LAYERS * ADAPTER_WITH_BIASES,
    "adapter-l": LAYERS * (ADAPTER_WITH_BIASES + 2 * D),  # + the adapter's own LayerNorm
    "adapter-d": LAYERS * ADAPTER_WITH_BIASES,  # floor(5 * 2 / 12) = 0 blocks dropped
    "series": LAYERS * 2 * M * D,  # no biases
    "ft-top2": LAYERS * (4 * (D * D + D) + 2 * 2 * D + 2 * D * INTER + INTER + D),  # both blocks, whole
    "vera": 4 * (M + D),  # lambda_d (r) and lambda_b (out) per adapted 32 x 32 layer
    "dylora": 4 * M * (D + D),  # as LoRA
}
KV = 16  # tiny_llama's key / value width: 2 key-value heads of 8
EXPECTED_LLAMA = {
    "adapter-h": 2 * LAYERS * ADAPTER_WITH_BIASES + NORMS_LLAMA,
    "adapter-p": LAYERS * ADAPTER_WITH_BIASES,
    "adapter-l": LAYERS * (ADAPTER_WITH_BIASES + 2 * D),
    "adapter-d": LAYERS * ADAPTER_WITH_BIASES,
    "series": LAYERS * 2 * M * D,
    "parallel": LAYERS * 2 * M * D,
    "prefix": M * LAYERS * 2 * KV,  # a key and a value vector per virtual token and layer
    "ft-top2": LAYERS * (2 * D * D + 2 * KV * D + 3 * D * INTER + 2 * D),
    "vera": LAYERS * ((M + D) + (M + KV)),  # q_proj 32 -> 32, v_proj 32 -> 16
    "dylora": LAYERS * M * ((D + D) + (D + KV)),
}


@pytest.mark.parametrize("method", BERT_METHODS)
def test_trainable_parameters_on_a_bert_classifier(method):
    prepared = prepare_model(tiny_bert(), spec(method))
    assert prepared.trainable_parameters().trainable == EXPECTED_BERT[method] + BERT_HEAD
    head = [n for n in trainable(prepared.model) if "classifier" in n]
    assert sum(trainable(prepared.model)[n] for n in head) == BERT_HEAD


@pytest.mark.parametrize("method", LLAMA_METHODS)
def test_trainable_parameters_on_a_llama(method):
    prepared = prepare_model(tiny_llama(), spec(method, LLAMA_TARGETS))
    assert prepared.trainable_parameters().trainable == EXPECTED_LLAMA[method]


def test_houlsby_places_two_adapters_a_block_pfeiffer_one():
    houlsby = prepare_model(tiny_bert(), spec("adapter-h")).model
    pfeiffer = prepare_model(tiny_bert(), spec("adapter-p")).model
    lin = prepare_model(tiny_bert(), spec("adapter-l")).model

    def carriers(model):
        return sorted(name for name, m in model.named_modules() if hasattr(m, ADAPTER))
    layer = "bert.encoder.layer"
    assert carriers(houlsby) == [f"{layer}.{i}.{place}" for i in range(LAYERS)
                                 for place in ("attention.output.dense", "output.dense")]
    assert carriers(pfeiffer) == [f"{layer}.{i}.output.dense" for i in range(LAYERS)]
    assert carriers(lin) == [f"{layer}.{i}" for i in range(LAYERS)]


def test_adapter_drop_leaves_the_lowest_five_of_twelve_blocks_without_adapters():
    model = prepare_model(bert_with(12), spec("adapter-d")).model
    carriers = [name for name, m in model.named_modules() if hasattr(m, ADAPTER)]
    assert carriers == [f"bert.encoder.layer.{i}.output.dense" for i in range(5, 12)]
    assert sum(trainable(model).values()) == 7 * ADAPTER_WITH_BIASES + BERT_HEAD


def test_ft_top2_trains_the_last_two_blocks_only():
    model = prepare_model(bert_with(5), spec("ft-top2")).model
    blocks = {name.split(".")[3] for name in trainable(model) if name.startswith("bert.encoder.layer.")}
    assert blocks == {"3", "4"}
    top = ("bert.encoder.layer.3.", "bert.encoder.layer.4.", "classifier.")
    assert all(n.startswith(top) for n in trainable(model))


def test_bitfit_trains_only_bias_terms_and_the_head():
    names = trainable(prepare_model(tiny_bert(), spec("bitfit")).model)
    assert all(n.endswith(".bias") or n.startswith("classifier.") for n in names)


@pytest.mark.parametrize("method", [m for m in LLAMA_METHODS if m != "prefix"])
def test_every_added_method_starts_as_the_base_model(method):
    x = token_batch()
    prepared = prepare_model(tiny_llama(), spec(method, LLAMA_TARGETS))
    torch.testing.assert_close(logits(prepared.model, x), logits(tiny_llama(), x))


# ------------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("make, method, message", [
    (tiny_llama, "bitfit", "method 'bitfit' trains bias terms only, and LlamaForCausalLM has none"),
    (tiny_bert, "prefix", "BertForSequenceClassification is not one"),
    (tiny_bert, "parallel", "a parallel adapter needs the MLP as one module"),
])
def test_a_method_that_cannot_apply_is_refused_before_any_change(make, method, message):
    model = make()
    before = {n: p.clone() for n, p in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        prepare_model(model, spec(method, LLAMA_TARGETS if make is tiny_llama else BERT_ON_BERT))
    assert all(p.requires_grad for p in model.parameters())  # untouched
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())


def test_a_run_refuses_from_the_config_alone(tmp_path):
    """The directory holds config.json and no weights: the refusal comes before any loading."""
    from kasa_peft.pipelines.method_fit import check_method_fits_model

    tiny_llama().config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'bitfit' trains bias terms only"):
        check_method_fits_model("bitfit", str(tmp_path), "causal_lm")
    with pytest.raises(ValueError, match="'prefix' trains a key/value prefix"):
        check_method_fits_model("prefix", str(tmp_path), "sequence_classification")
    check_method_fits_model("adapter-h", str(tmp_path), "causal_lm")  # fits: no error


# ---------------------------------------------------------------------------------------------------- DyLoRA


def test_dylora_trains_a_random_truncation_and_evaluates_at_full_rank():
    torch.manual_seed(0)
    alpha = 16.0
    factors = DyLoraFactors(6, 5, r=M, alpha=alpha, dropout=0.0)
    randomise(factors)
    x = torch.randn(3, 6)
    for b in range(1, M + 1):
        factors.rank = b
        factors.train()
        torch.testing.assert_close(factors(x), alpha / b * x @ factors.A[:b].T @ factors.B[:, :b].T)
    factors.eval()
    torch.testing.assert_close(factors(x), alpha / M * x @ factors.A.T @ factors.B.T)


def test_dylora_gradient_reaches_only_the_truncated_factors():
    factors = DyLoraFactors(6, 5, r=M, alpha=8.0, dropout=0.0)
    randomise(factors)
    factors.rank = 2
    factors(torch.randn(3, 6)).sum().backward()
    assert torch.count_nonzero(factors.A.grad[2:]) == 0 and torch.count_nonzero(factors.B.grad[:, 2:]) == 0
    assert torch.count_nonzero(factors.A.grad[:2]) > 0


def test_dylora_rank_schedule_is_uniform_reproducible_and_set_every_step():
    prepared = prepare_model(tiny_llama(), spec("dylora", LLAMA_TARGETS))
    schedule = prepared.rank_schedule
    ranks = [schedule.rank(step) for step in range(400)]
    assert set(ranks) == set(range(1, M + 1))
    assert all(abs(ranks.count(b) / 400 - 1 / M) < 0.08 for b in range(1, M + 1))
    assert ranks == [RankSchedule(prepared.model, M, schedule.seed).rank(s) for s in range(400)]
    layers = [m for m in prepared.model.modules() if isinstance(m, DyLoraFactors)]
    assert len(layers) == 2 * LAYERS and {m.rank for m in layers} == {ranks[0]}
    prepared.on_step_begin(7)  # the Trainer's callback, before step 7 (a resumed run's first step too)
    assert {m.rank for m in layers} == {ranks[7]}


# ---------------------------------------------------------------------------------------------------- prefix


def greedy_by_forward(model, ids: torch.Tensor, steps: int) -> list[int]:
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0].tolist()


@pytest.mark.parametrize("reload", [False, True])
def test_prefix_generation_uses_the_prefix(reload, tmp_path):
    prepared = prepare_model(tiny_llama(), spec("prefix", LLAMA_TARGETS))
    with torch.no_grad():
        prepared.model.prompt_encoder["default"].embedding.weight.mul_(50)  # a prefix that changes the outputs
    model = prepared.model
    if reload:
        prepared.save(tmp_path)
        model = load_trained(tiny_llama(), tmp_path)
    model.eval()
    x = token_batch(1)
    expected = greedy_by_forward(model, x, 6)
    assert expected != greedy_by_forward(tiny_llama(), x, 6)
    with torch.no_grad():
        generated = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=6, do_sample=False)
    assert generated[0].tolist() == expected


# --------------------------------------------------------------------------------------- save, load, resume


CASES = [(tiny_bert, m) for m in BERT_METHODS] + [(tiny_llama, m) for m in LLAMA_METHODS]


@pytest.mark.parametrize("make, method", CASES, ids=[f"{make.__name__}-{m}" for make, m in CASES])
def test_save_then_load_trained_reproduces_outputs(make, method, tmp_path):
    prepared = prepare_model(make(), spec(method, LLAMA_TARGETS if make is tiny_llama else BERT_ON_BERT))
    perturb_trainable(prepared.model)
    x = token_batch()
    expected = logits(prepared.model, x)
    prepared.save(tmp_path)
    assert json.loads((tmp_path / "kasa_peft_method.json").read_text())["method"] == method
    if (tmp_path / WEIGHTS_FILE).is_file():  # our own baselines: what was trained, nothing else
        from safetensors.torch import load_file

        saved = load_file(str(tmp_path / WEIGHTS_FILE))
        assert {n: v.numel() for n, v in saved.items()} == trainable(prepared.model)
    loaded = load_trained(make(), tmp_path)
    torch.testing.assert_close(logits(loaded, x), expected, rtol=0, atol=1e-5)
    assert not torch.allclose(expected, logits(make(), x), atol=1e-3)  # the trained weights matter


@pytest.mark.parametrize("make, method", CASES, ids=[f"{make.__name__}-{m}" for make, m in CASES])
def test_resume_reaches_the_uninterrupted_run(make, method, tmp_path):
    """7 steps over 3 batches an epoch, interrupted after step 5 and resumed from its checkpoint."""
    from .test_trainer import StopAt, adapter_state, make_trainer

    causal = make is tiny_llama
    settings = dict(max_steps=7, save_strategy="steps", save_steps=5, causal=causal, learning_rate=1e-3)

    def run(output_dir, stop=None, resume=None):
        trainer = make_trainer(output_dir, method, callbacks=[StopAt(stop)] if stop else [], **settings)
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    expected = adapter_state(run(tmp_path / "full"))
    first = adapter_state(run(tmp_path / "cut", stop=5))
    resumed = adapter_state(run(tmp_path / "cut", resume=str(tmp_path / "cut" / "checkpoint-5")))
    assert any(not torch.allclose(first[n], expected[n]) for n in expected)
    assert resumed.keys() == expected.keys()
    for name, value in resumed.items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6)
