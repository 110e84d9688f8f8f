"""GGUF export: a llama.cpp LoRA adapter file and the merged model as one GGUF file."""

from __future__ import annotations

import importlib.util
import shutil

import gguf
import numpy as np
import pytest
import torch
from tiny_models import MIXED_BUDGET, tiny_gpt2, tiny_llama, tiny_llama_with_tails

import kasa_peft as kp
from kasa_peft.cli import main
from kasa_peft.interop.gguf import (
    ModulesToSaveInAdapter, UnsupportedArchitecture, export_gguf_adapter, export_merged_gguf,
)

from .gguf_support import llama_cpp_logits, llama_rows_by_hand, write_base_gguf
from .support import save_word_tokenizer, train_like

QType = gguf.GGMLQuantizationType
MIXED = kp.KasaConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj"), drop_rank="auto", drop_budget=MIXED_BUDGET)


def read_tensors(path) -> dict[str, gguf.ReaderTensor]:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def expected_pairs(model: torch.nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """By llama.cpp tensor name: ``(lora_a, lora_b)`` = ``([A; vt], [B diag(scale sigma), -us])``, B in llama rows."""
    config = model.config
    heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}
    short = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    pairs = {}
    for name, layer in kp.kasa_layers(model):
        adapter = layer.adapters["default"]
        lora_a = torch.cat([adapter.A, adapter.dropped_vt])
        lora_b = torch.cat([adapter.B * (adapter.scale * adapter.sigma), -adapter.dropped_us], dim=1)
        block, kind = name.split(".")[2], name.split(".")[-1]
        if kind in heads:
            lora_b = llama_rows_by_hand(lora_b, heads[kind])
        pairs[f"blk.{block}.{short[kind]}.weight"] = (lora_a.detach(), lora_b.detach())
    return pairs


def test_adapter_tensors_are_the_exact_lora_factors_in_llama_layout(setups, tmp_path):
    setup = setups["llama"]
    out = export_gguf_adapter(setup.adapter_dir, tmp_path / "adapter.gguf", base_model=setup.base())
    tensors = read_tensors(out)
    expected = expected_pairs(setup.adapted())
    assert set(tensors) == {f"{n}.lora_{ab}" for n in expected for ab in "ab"}
    rank = 2 * setup.config.r
    for name, (lora_a, lora_b) in expected.items():
        a, b = tensors[f"{name}.lora_a"], tensors[f"{name}.lora_b"]
        out_features, in_features = lora_b.shape[0], lora_a.shape[1]
        # ggml's ne as llama_adapter_lora_init checks it: a.ne = [in, rank], b.ne = [rank, out]
        assert (list(a.shape), list(b.shape)) == ([in_features, rank], [rank, out_features])
        assert a.tensor_type == b.tensor_type == QType.F32
        np.testing.assert_array_equal(a.data, lora_a.numpy())
        np.testing.assert_array_equal(b.data, lora_b.numpy())


def test_layers_of_different_rank_are_zero_padded_to_one_rank_that_alpha_scales_by_one(tmp_path):
    """drop_rank auto: d = 4, 0, 2, 1, so ranks r + d = 8, 4, 6, 5. llama.cpp scales each pair by
    alpha / (its rank): padded to 8 with alpha 8, every pair's product is the layer's exact change."""
    model = kp.inject(tiny_llama_with_tails(), MIXED)
    train_like(model, "default", seed=3)
    out = export_gguf_adapter(model, tmp_path / "mixed.gguf")
    reader = gguf.GGUFReader(out)
    alpha = reader.fields["adapter.lora.alpha"].contents()
    tensors = read_tensors(out)
    expected = expected_pairs(model)
    assert sorted(a.shape[0] for a, _ in expected.values()) == [4, 5, 6, 8]
    for name, (lora_a, lora_b) in expected.items():
        a, b = tensors[f"{name}.lora_a"].data, tensors[f"{name}.lora_b"].data
        assert a.shape[0] == b.shape[1] == alpha == 8
        np.testing.assert_allclose(alpha / b.shape[1] * (b @ a), (lora_b @ lora_a).numpy(), rtol=1e-5, atol=1e-6)


def test_adapter_metadata_round_trip(setups, tmp_path):
    setup = setups["llama"]
    reader = gguf.GGUFReader(export_gguf_adapter(setup.adapter_dir, tmp_path / "a.gguf", base_model=setup.base()))
    values = {k: reader.fields[k].contents() for k in
              ("general.architecture", "general.type", "adapter.type", "adapter.lora.alpha")}
    assert values == {"general.architecture": "llama", "general.type": "adapter", "adapter.type": "lora",
                      "adapter.lora.alpha": 2.0 * setup.config.r}


def test_rope_rows_follow_llama_cpps_permutation():
    """The library's q/k permutation equals the index-by-index definition (for k with fewer heads too)."""
    from kasa_peft.interop.gguf.naming import GgufLayout

    layout = GgufLayout.of(tiny_llama().config)
    rows = torch.arange(16 * 3, dtype=torch.float32).reshape(16, 3)
    assert torch.equal(layout.to_llama_rows("blk.1.attn_k.weight", rows), llama_rows_by_hand(rows, 2))
    rows = torch.arange(32 * 2, dtype=torch.float32).reshape(32, 2)
    assert torch.equal(layout.to_llama_rows("blk.0.attn_q.weight", rows), llama_rows_by_hand(rows, 4))
    assert torch.equal(layout.to_llama_rows("blk.0.attn_v.weight", rows), rows)


def test_unsupported_architecture_is_refused_and_nothing_written(setups, tmp_path):
    setup = setups["gpt2"]
    with pytest.raises(UnsupportedArchitecture, match="Llama family.*'gpt2'.*convert_lora_to_gguf"):
        export_gguf_adapter(setup.adapter_dir, tmp_path / "a.gguf", base_model=setup.base())
    assert list(tmp_path.iterdir()) == []


def llama_with_saved_head() -> torch.nn.Module:
    model = tiny_llama()
    kp.inject(model, kp.KasaConfig(r=2, alpha=4, target_modules=("q_proj", "v_proj"), modules_to_save=("lm_head",)))
    train_like(model, "default", seed=3)
    return model


def test_modules_to_save_are_refused_with_the_merged_export_named(tmp_path):
    with pytest.raises(ModulesToSaveInAdapter, match="lm_head.*--format merged-gguf"):
        export_gguf_adapter(llama_with_saved_head(), tmp_path / "a.gguf")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_not_overwritten(setups, tmp_path):
    out = tmp_path / "a.gguf"
    out.write_text("keep")
    with pytest.raises(FileExistsError, match="already exists"):
        export_gguf_adapter(setups["llama"].adapter_dir, out, base_model=setups["llama"].base())
    assert out.read_text() == "keep"


def merged_in_llama_rows(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """Independently: every parameter of the merged model, q/k rows reordered by hand, by llama.cpp name."""
    merged = kp.merge_and_unload(model)
    config = merged.config
    result = {}
    for name, value in merged.state_dict().items():
        value = value.detach().float()
        if name.endswith("q_proj.weight"):
            value = llama_rows_by_hand(value, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            value = llama_rows_by_hand(value, config.num_key_value_heads)
        result[name] = value.numpy()
    return result


def test_merged_f32_holds_the_merged_weights_and_the_rest_unchanged(tmp_path):
    model = llama_with_saved_head()
    base = write_base_gguf(tiny_llama(), tmp_path / "base.gguf")
    out = export_merged_gguf(model, tmp_path / "merged.gguf", tensor_type="f32", base_gguf=base)
    written, source = read_tensors(out), read_tensors(base)
    expected = merged_in_llama_rows(model)
    np.testing.assert_allclose(written["blk.1.attn_q.weight"].data, expected["model.layers.1.self_attn.q_proj.weight"],
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose(written["blk.0.attn_v.weight"].data, expected["model.layers.0.self_attn.v_proj.weight"],
                               rtol=0, atol=1e-6)
    np.testing.assert_array_equal(written["output.weight"].data, expected["lm_head.weight"])  # the saved head
    assert not np.array_equal(written["output.weight"].data, source["output.weight"].data)
    for name in ("blk.0.attn_k.weight", "blk.1.ffn_down.weight", "token_embd.weight", "output_norm.weight"):
        np.testing.assert_array_equal(written[name].data, source[name].data)
    reader = gguf.GGUFReader(out)
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.ALL_F32
    assert reader.fields["tokenizer.ggml.model"].contents() == "no_vocab"  # the source's metadata is carried over


def test_merged_source_type_requantizes_changed_tensors_and_copies_the_rest(tmp_path):
    model = llama_with_saved_head()
    base = write_base_gguf(tiny_llama(), tmp_path / "base.gguf", QType.Q8_0)
    out = export_merged_gguf(model, tmp_path / "merged.gguf", tensor_type="source", base_gguf=base)
    written, source = read_tensors(out), read_tensors(base)
    expected = merged_in_llama_rows(model)
    q = written["blk.0.attn_q.weight"]
    assert q.tensor_type == QType.Q8_0
    np.testing.assert_array_equal(q.data, gguf.quants.quantize(expected["model.layers.0.self_attn.q_proj.weight"],
                                                               QType.Q8_0))
    assert written["blk.1.ffn_down.weight"].tensor_type == QType.F32  # rows of 48: no whole Q8_0 blocks
    for name in ("blk.0.attn_k.weight", "blk.1.ffn_up.weight", "token_embd.weight"):
        assert written[name].tensor_type == source[name].tensor_type
        np.testing.assert_array_equal(written[name].data, source[name].data)


def test_merged_q8_0_falls_back_to_f16_where_blocks_do_not_fit(tmp_path):
    base = write_base_gguf(tiny_llama(), tmp_path / "base.gguf")
    out = export_merged_gguf(llama_with_saved_head(), tmp_path / "m.gguf", tensor_type="q8_0", base_gguf=base)
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(out).tensors}
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == QType.Q8_0
    assert types["blk.0.ffn_down.weight"] == QType.F16
    assert types["blk.0.attn_norm.weight"] == QType.F32


def test_merged_needs_the_bases_gguf_file(setups, tmp_path):
    setup = setups["llama"]
    with pytest.raises(ValueError, match="is not one; pass --base FILE.gguf"):
        export_merged_gguf(setup.adapter_dir, tmp_path / "m.gguf", base_model=setup.base())
    assert list(tmp_path.iterdir()) == []


def test_merged_refuses_a_gguf_of_another_model(tmp_path):
    model = tiny_llama()
    model.config.num_hidden_layers = 1
    small = write_base_gguf(type(model)(model.config), tmp_path / "small.gguf")
    with pytest.raises(ValueError, match="blk.1.attn_q.weight.*no such tensor"):
        export_merged_gguf(llama_with_saved_head(), tmp_path / "m.gguf", base_gguf=small)
    assert [p.name for p in tmp_path.iterdir()] == ["small.gguf"]


def test_cli_writes_the_adapter_and_explains_a_missing_gguf_base(setups, tmp_path, capsys):
    setup = setups["llama"]
    base_dir = shutil.copytree(setup.base_dir, tmp_path / "base")
    save_word_tokenizer(base_dir)  # the CLI loads the base with its tokenizer
    main(["export", str(setup.adapter_dir), "--format", "gguf", "--out", str(tmp_path / "a.gguf"),
          "--base", str(base_dir)])
    assert gguf.GGUFReader(tmp_path / "a.gguf").fields["adapter.type"].contents() == "lora"
    assert main(["export", str(setup.adapter_dir), "--format", "merged-gguf", "--out", str(tmp_path / "m.gguf"),
                 "--base", str(base_dir)]) == 1
    assert "kasa-peft: error: merged-gguf takes the tokenizer" in capsys.readouterr().err
    assert main(["export", str(setup.adapter_dir), "--format", "gguf", "--out", str(tmp_path / "b.gguf"),
                 "--base", str(base_dir), "--gguf-type", "f16"]) == 1
    assert "--gguf-type applies to --format merged-gguf only" in capsys.readouterr().err


def test_gpt2_is_unsupported_for_merged_too(tmp_path):
    model = tiny_gpt2()
    kp.inject(model, kp.KasaConfig(r=2, target_modules=("c_attn",)))
    with pytest.raises(UnsupportedArchitecture):
        export_merged_gguf(model, tmp_path / "m.gguf")


needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="llama-cpp-python is not installed (pip install 'kasa-peft[llama]')")
TOKENS = [5, 17, 99, 3, 64, 120, 8, 42, 7, 77, 31, 2]


def llama_all_linear() -> torch.nn.Module:
    model = tiny_llama()
    kp.inject(model, kp.KasaConfig(r=2, alpha=4, target_modules="all-linear"))
    train_like(model, "default", seed=5)
    return model


def llama_mixed_ranks() -> torch.nn.Module:
    model = kp.inject(tiny_llama_with_tails(), MIXED)
    train_like(model, "default", seed=5)
    return model


@needs_llama_cpp
@pytest.mark.parametrize("adapted, base_model", [(llama_all_linear, tiny_llama),
                                                 (llama_mixed_ranks, tiny_llama_with_tails)])
def test_llama_cpp_with_our_adapter_matches_our_model(tmp_path, adapted, base_model):
    """All seven projections with d = r; and q_proj / v_proj with d = 4, 0, 2, 1 (drop_rank auto)."""
    model = adapted()
    base = write_base_gguf(base_model(), tmp_path / "base.gguf")
    adapter = export_gguf_adapter(model, tmp_path / "adapter.gguf")
    with torch.no_grad():
        ours = model(torch.tensor([TOKENS])).logits[0].numpy()
        with kp.disable_adapters(model):
            ours_base = model(torch.tensor([TOKENS])).logits[0].numpy()
    # f32 weights in both runtimes: the base alone differs by float rounding only (measured ~6e-5); the adapted
    # model's rounding differs by a small multiple of it (~1.4e-4 with the adapter, ~1.3e-4 merged), while a
    # wrong layout (q/k rows of lora_b not permuted) is off by ~2e-2.
    floor = np.abs(llama_cpp_logits(base, TOKENS) - ours_base).max()
    tolerance = 4 * floor + 1e-5
    assert floor < 1e-3
    assert np.abs(ours - ours_base).max() > 100 * tolerance  # the adapter matters: the check can fail
    assert np.abs(llama_cpp_logits(base, TOKENS, adapter) - ours).max() <= tolerance
    merged = export_merged_gguf(model, tmp_path / "merged.gguf", tensor_type="f32", base_gguf=base)
    assert np.abs(llama_cpp_logits(merged, TOKENS) - ours).max() <= tolerance


def test_merged_refuses_a_cut_off_base_gguf_naming_it(tmp_path):
    base = write_base_gguf(tiny_llama(), tmp_path / "base.gguf")
    data = base.read_bytes()
    base.write_bytes(data[:len(data) * 3 // 4])
    with pytest.raises(ValueError, match=rf"{base} is truncated"):
        export_merged_gguf(llama_with_saved_head(), tmp_path / "m.gguf", base_gguf=base)
    assert [p.name for p in tmp_path.iterdir()] == ["base.gguf"]
