"""KaSA on bitsandbytes bases (Linear4bit NF4 / FP4, double quantization, Linear8bitLt), on the CPU.

Expectations come from bitsandbytes itself (its dequantization and quantization, called here directly), float64
SVDs and PEFT 0.21.2. The tiny models have rows of 64 or more: bitsandbytes' CPU 4-bit kernels need the input
size to be a multiple of the block size (64). On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight in
place at its first eval-mode forward without gradients and then computes with bfloat16 statistics; the tests
turn that path off (``support_avx512bf16_for_cpu``), except the one test of it.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from peft import PeftModel
from tiny_models import tiny_bert, tiny_llama, token_batch
from transformers import BertForSequenceClassification, LlamaForCausalLM

import kasa_peft as kp
from kasa_peft.core import fingerprint, io as core_io
from kasa_peft.core import model as core_model
from kasa_peft.training.methods import MethodSpec, prepare_model

bnb = pytest.importorskip("bitsandbytes")
from kasa_peft.interop import export_lora, export_merged  # noqa: E402
from kasa_peft.models.bitsandbytes import quantize_linear_layers  # noqa: E402

KINDS = {"nf4-double": {"quantize": "4bit", "quant_type": "nf4", "double_quant": True},
         "fp4": {"quantize": "4bit", "quant_type": "fp4", "double_quant": False},
         "int8": {"quantize": "8bit"}}
CONFIG = kp.KasaConfig(r=4, target_modules="all-linear")


def llama(seed: int = 0) -> LlamaForCausalLM:
    return tiny_llama(seed, hidden_size=64, intermediate_size=128)


def bert(seed: int = 0) -> BertForSequenceClassification:
    return tiny_bert(seed=seed, hidden_size=64, intermediate_size=128)


MODELS = {"llama": llama, "bert": bert}


def quantized(kind: str, name: str = "llama", seed: int = 0, cpu_packing: bool = False) -> torch.nn.Module:
    model = quantize_linear_layers(MODELS[name](seed), **KINDS[kind])
    for layer in bnb_layers(model).values():
        if isinstance(layer, bnb.nn.Linear4bit):
            layer.support_avx512bf16_for_cpu &= cpu_packing
    return model


def adapted(kind: str, name: str = "llama", seed: int = 0, cpu_packing: bool = False) -> torch.nn.Module:
    """A quantized model with a KaSA adapter that changes its outputs (B != 0)."""
    model = quantized(kind, name, seed, cpu_packing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny matrices: truncation removes more than 1% of their norm
        kp.inject(model, CONFIG)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for _, layer in kp.kasa_layers(model):
            adapter = layer.adapters["default"]
            adapter.B.copy_(0.3 * torch.randn(adapter.B.shape, generator=generator))
    return model


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(token_batch()).logits


def bnb_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))}


def reference_dequantized(layer: torch.nn.Module) -> torch.Tensor:
    """Straight from bitsandbytes (4-bit) or the LLM.int8() formula ``CB * SCB / 127`` (8-bit), in float64."""
    weight = layer.weight
    if isinstance(layer, bnb.nn.Linear4bit):
        return bnb.functional.dequantize_4bit(weight.data, weight.quant_state).double()
    scale = weight.SCB if weight.SCB is not None else layer.state.SCB
    return weight.data.double() * scale.double()[:, None] / 127


def packed(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.data.clone() for n, m in bnb_layers(model).items()}


def hand_delta(adapter: kp.KasaAdapter) -> torch.Tensor:
    """``scale B diag(sigma) A - us vt`` in float64."""
    a, b, sigma = adapter.A.double(), adapter.B.double(), adapter.sigma.double()
    return adapter.scale * b @ torch.diag(sigma) @ a - adapter.dropped_us.double() @ adapter.dropped_vt.double()


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("kind", KINDS)
def test_truncation_equals_a_float64_svd_of_the_dequantized_weight(kind, name):
    model = adapted(kind, name)
    layers = dict(kp.kasa_layers(model))
    assert len(layers) == len(bnb_layers(model)) > 0
    for layer in layers.values():
        weight = reference_dequantized(layer.base_layer)
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        expected = (u[:, -4:] * s[-4:]) @ vh[-4:]
        adapter = layer.adapters["default"]
        actual = adapter.dropped_us.double() @ adapter.dropped_vt.double()
        assert (actual - expected).abs().max() <= 1e-6 * s[0]
        assert adapter.A.dtype == adapter.dropped_us.dtype == torch.float32


@pytest.mark.skipif(not bnb.functional.has_avx512bf16(), reason="bitsandbytes packs 4-bit weights on AVX512-BF16 CPUs")
@pytest.mark.parametrize("kind", ["nf4-double", "fp4"])
def test_weights_bitsandbytes_packed_for_cpu_inference_are_read_and_left_working(kind, tmp_path):
    model = quantized(kind, cpu_packing=True)
    unpacked = {n: reference_dequantized(m) for n, m in bnb_layers(model).items()}
    expected = logits(model)  # eval mode, no gradients: bitsandbytes repacks every 4-bit weight in place
    assert all(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in bnb_layers(model).values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kp.inject(model, CONFIG)
    for name, layer in kp.kasa_layers(model):
        weight = unpacked[name]  # the packed layer computes with bfloat16 statistics: equal to bfloat16 rounding
        dropped = layer.adapters["default"].dropped_us.double() @ layer.adapters["default"].dropped_vt.double()
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        assert (dropped - (u[:, -4:] * s[-4:]) @ vh[-4:]).abs().max() <= 2e-2 * s[0]
    with kp.disable_adapters(model):
        assert torch.equal(logits(model), expected)
    kp.save_adapter(model, tmp_path / "adapter")
    assert torch.equal(logits(kp.unload(model)), expected)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_equals_the_quantized_layer_plus_the_adapter(kind):
    model = adapted(kind)
    x = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(2))
    for _, layer in kp.kasa_layers(model):
        if layer.in_features != 64:
            continue
        with torch.no_grad():
            expected = layer.base_layer(x).double() + x.double() @ hand_delta(layer.adapters["default"]).T
            actual = layer(x)
        assert (actual.double() - expected).abs().max() <= 1e-4 * expected.abs().max()


@pytest.mark.parametrize("kind", KINDS)
def test_the_base_stays_quantized_and_only_the_adapter_trains(kind):
    model = adapted(kind)
    before = packed(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    model(token_batch(), labels=token_batch()).loss.backward()
    optimizer.step()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained and all(n.endswith((".A", ".B", ".sigma")) for n in trained)
    after = packed(model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert {m.weight.dtype for m in bnb_layers(model).values()} <= {torch.uint8, torch.int8}


@pytest.mark.parametrize("kind", KINDS)
def test_disable_and_unload_give_back_the_quantized_base_exactly(kind):
    model = adapted(kind)
    base = quantized(kind)
    expected, base_packed = logits(base), packed(base)
    assert not torch.equal(logits(model), expected)  # the adapter changes the outputs: the checks can fail
    with kp.disable_adapters(model):
        assert torch.equal(logits(model), expected)
    kp.unload(model)
    assert torch.equal(logits(model), expected)
    assert {n: type(m) for n, m in bnb_layers(model).items()} == {n: type(m) for n, m in bnb_layers(base).items()}
    assert all(torch.equal(base_packed[n], w) for n, w in packed(model).items())


@pytest.mark.parametrize("kind", KINDS)
def test_merge_requantizes_the_sum_and_unmerge_restores_bit_exact(kind):
    model = adapted(kind)
    before, adapted_logits = packed(model), logits(model)
    layers = dict(kp.kasa_layers(model))
    sums = {n: reference_dequantized(layer.base_layer) + hand_delta(layer.adapters["default"])
            for n, layer in layers.items()}
    with pytest.warns(UserWarning, match="requantizes"):
        kp.merge(model)
    for name, layer in layers.items():
        merged = reference_dequantized(layer.base_layer)
        base = layer.base_layer
        if isinstance(base, bnb.nn.Linear4bit):  # what bitsandbytes makes of the sum, quantized as the base was
            state = layer.replaced_by_merge["weight"].quant_state
            requantized = bnb.nn.Params4bit(sums[name].to(state.dtype), requires_grad=False,
                                            quant_type=state.quant_type, blocksize=state.blocksize,
                                            compress_statistics=state.nested).to("cpu")
            expected = bnb.functional.dequantize_4bit(requantized.data, requantized.quant_state).double()
            # the same codes (a code step is ~0.1 of a block's absmax), up to float32 rounding of the sum and of
            # the double-quantized statistics
            assert (merged - expected).abs().max() <= 1e-2 * expected.abs().max()
        else:  # row-wise absmax int8 of the float16 sum: within half a step of 1/127 of the row's absmax
            step = sums[name].half().double().abs().amax(dim=1, keepdim=True) / 127
            assert ((merged - sums[name]).abs() <= 0.5 * step + 1e-3 * sums[name].abs()).all()
    merged_logits = logits(model)
    assert (merged_logits - adapted_logits).abs().max() < (adapted_logits - logits(quantized(kind))).abs().max()
    with kp.disable_adapters(model):
        assert torch.equal(logits(model), logits(quantized(kind)))
    kp.unmerge(model)
    assert all(torch.equal(before[n], w) for n, w in packed(model).items())
    assert torch.equal(logits(model), adapted_logits)


def test_merge_and_unload_keeps_a_quantized_model_with_the_merged_weights():
    model = adapted("nf4-double")
    with pytest.warns(UserWarning, match="requantizes"):
        plain = kp.merge_and_unload(model)
    assert not any(isinstance(m, kp.KasaLayer) for m in plain.modules())
    assert all(isinstance(m, bnb.nn.Linear4bit) for m in bnb_layers(plain).values())
    assert all(p.requires_grad == p.dtype.is_floating_point for p in plain.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_compute_no_svd(kind, tmp_path, monkeypatch):
    model = adapted(kind)
    kp.save_adapter(model, tmp_path / "adapter")

    def no_truncation(*args, **kwargs):
        raise AssertionError("loading computed a truncation")

    monkeypatch.setattr(core_model, "truncate_for", no_truncation)
    monkeypatch.setattr(torch.linalg, "svd", no_truncation)
    monkeypatch.setattr(torch.linalg, "eigh", no_truncation)
    loaded = kp.load_adapter(quantized(kind), tmp_path / "adapter")
    assert torch.equal(logits(loaded), logits(model))


@pytest.mark.parametrize("kind", KINDS)
def test_the_lora_export_loads_in_peft_on_the_quantized_base(kind, tmp_path):
    model = adapted(kind)
    out = export_lora(model, tmp_path / "lora")
    reference = PeftModel.from_pretrained(quantized(kind), str(out)).eval()
    assert any(type(m).__module__ == "peft.tuners.lora.bnb" for m in reference.modules())  # PEFT's bnb LoRA layers
    expected, actual = logits(model), logits(reference)
    assert (actual - expected).abs().max() <= 1e-3 * expected.abs().max()
    assert (logits(quantized(kind)) - expected).abs().max() > 1e-1 * expected.abs().max()


@pytest.mark.parametrize("kind", KINDS)
def test_an_adapter_moves_between_the_quantized_and_full_precision_base(kind, tmp_path):
    """The same model in another storage loads; another model of the same shape does not, in either direction."""
    kp.save_adapter(adapted(kind), tmp_path / "on_quantized")
    on_float = llama()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kp.inject(on_float, CONFIG)
    kp.save_adapter(on_float, tmp_path / "on_float")
    assert kp.kasa_state(kp.load_adapter(llama(), tmp_path / "on_quantized")).active == "default"
    assert kp.kasa_state(kp.load_adapter(quantized(kind), tmp_path / "on_float")).active == "default"
    with pytest.raises(ValueError, match="different base model"):
        kp.load_adapter(llama(seed=1), tmp_path / "on_quantized")
    with pytest.raises(ValueError, match="different base model"):
        kp.load_adapter(quantized(kind, seed=1), tmp_path / "on_float")


def test_an_adapter_trained_on_a_4bit_base_exports_merged_into_the_full_precision_base(tmp_path):
    kp.save_adapter(adapted("nf4-double"), tmp_path / "adapter")
    out = export_merged(tmp_path / "adapter", tmp_path / "merged", base_model=llama())
    merged = LlamaForCausalLM.from_pretrained(str(out)).eval()
    assert not bnb_layers(merged) and merged.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    expected = logits(kp.load_adapter(llama(), tmp_path / "adapter"))  # the adapter on the float32 base
    assert (logits(merged) - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_the_saved_tolerance_is_the_quantized_schemes():
    metadata = {}
    for kind in KINDS:
        metadata[kind], _ = core_io.adapter_contents(adapted(kind))
    assert metadata["nf4-double"]["base_fingerprint_tolerance"] == metadata["fp4"]["base_fingerprint_tolerance"] > 0.1
    assert fingerprint.FINGERPRINT_TOLERANCE < metadata["int8"]["base_fingerprint_tolerance"] < 0.1


class QuantLinear(torch.nn.Module):
    """A GPTQ-style layer: packed ``qweight``, not an ``nn.Linear``."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("qweight", torch.zeros(linear.in_features // 8, linear.out_features, dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], self.out_features)


QuantLinear.__module__ = "auto_gptq.nn_modules.qlinear"


def int8_weight(linear: torch.nn.Linear) -> torch.nn.Linear:
    """An ``nn.Linear`` whose weight is int8 data (as weight-only quantization schemes store it)."""
    linear.weight = torch.nn.Parameter(linear.weight.data.to(torch.int8), requires_grad=False)
    return linear


@pytest.mark.parametrize("swap", [QuantLinear, int8_weight])
@pytest.mark.parametrize("targets", [("q_proj",), "all-linear"])
def test_unsupported_quantized_layers_are_refused_naming_what_is_supported(swap, targets):
    model = llama()
    attention = model.model.layers[0].self_attn
    attention.q_proj = swap(attention.q_proj)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj.*bitsandbytes Linear4bit"):
        kp.inject(model, kp.KasaConfig(r=4, target_modules=targets))
    assert not any(isinstance(m, kp.KasaLayer) for m in model.modules())  # refused before any change


@pytest.mark.parametrize("method", ["lora", "dora", "adalora"])
def test_peft_baselines_train_beside_the_same_quantized_base(method):
    model = quantized("nf4-double")
    before = packed(model)
    prepared = prepare_model(model, MethodSpec(method=method, r=4, target_modules=("q_proj", "v_proj"),
                                               total_steps=10))
    prepared.model.train()
    prepared.model(input_ids=token_batch(), labels=token_batch()).loss.backward()
    after = list(packed(prepared.model).values())  # the same layers, in order, renamed inside PEFT's wrappers
    assert len(after) == len(before)
    assert all(torch.equal(b, a) for b, a in zip(before.values(), after, strict=True))
    assert any(type(m).__module__.endswith(".bnb") for m in prepared.model.modules())  # PEFT's bitsandbytes layers


@pytest.mark.parametrize("method", ["pissa", "milora", "peft-kasa", "fft"])
def test_methods_that_rewrite_or_train_the_base_are_refused_on_a_quantized_one(method):
    model = quantized("int8")
    before = copy.deepcopy(packed(model))
    with pytest.raises(ValueError, match=f"method '{method}' cannot train on a quantized base"):
        prepare_model(model, MethodSpec(method=method, r=4, target_modules=("q_proj", "v_proj")))
    assert all(torch.equal(before[n], w) for n, w in packed(model).items())


@pytest.mark.parametrize("kind", ["nf4-double", "int8"])
def test_what_peft_itself_does_with_pissa_and_kasa_on_a_quantized_base(kind):
    """The reasons `prepare_model` gives for refusing them (README), checked on PEFT 0.21.2 directly: PiSSA raises;
    KaSA, dispatched to PEFT's bitsandbytes LoRA layers, silently becomes a plain LoRA (no truncation, no sigma)."""
    from peft import KasaConfig as PeftKasaConfig
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "v_proj"]
    with pytest.raises(TypeError, match="PiSSA"):
        get_peft_model(quantized(kind), LoraConfig(r=4, target_modules=targets, init_lora_weights="pissa"))
    model = quantized(kind)
    before = packed(model)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=targets, kasa_config=PeftKasaConfig()))
    layers = [m for m in peft_model.modules() if type(m).__module__ == "peft.tuners.lora.bnb"]
    assert len(layers) == 4 and not any(layer.lora_variant or getattr(layer, "lora_diag", {}) for layer in layers)
    assert all(torch.equal(b, a) for b, a in zip(before.values(), packed(peft_model).values(), strict=True))
