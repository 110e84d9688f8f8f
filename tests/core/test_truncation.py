"""Knowledge-based SVD truncation: the r smallest singular components, by eigh (with fallback) or SVD."""

from __future__ import annotations

import warnings

import pytest
import torch
from tiny_models import tiny_llama, with_spectrum

import kasa_peft.core.truncation as truncation
from kasa_peft import KasaConfig, inject, truncate_smallest

from .helpers import dropped_product, rel_err


def truncated(weight: torch.Tensor, r: int, method: str) -> torch.Tensor:
    dropped = truncate_smallest(weight, r, method)
    return weight.double() - dropped.us.double() @ dropped.vt.double()


def llama_down_proj() -> torch.Tensor:
    return tiny_llama().model.layers[0].mlp.down_proj.weight.detach()  # (32, 48): in > out


@pytest.fixture
def svd_calls(monkeypatch) -> list[int]:
    """Counts the SVD-path calls (the eigh path's fallback)."""
    calls = []
    original = truncation._smallest_by_svd

    def counting(w, r, *budget):
        calls.append(r)
        return original(w, r, *budget)

    monkeypatch.setattr(truncation, "_smallest_by_svd", counting)
    return calls


@pytest.mark.parametrize("method", ["eigh", "svd"])
@pytest.mark.parametrize("make_weight", [
    lambda: torch.randn(40, 16, generator=torch.Generator().manual_seed(0)),
    lambda: torch.randn(16, 40, generator=torch.Generator().manual_seed(0)),
    llama_down_proj,
], ids=["out>in", "in>out", "llama-down_proj"])
def test_truncated_weight_keeps_the_top_k_minus_r_singular_values(make_weight, method):
    weight, r = make_weight(), 5
    k = min(weight.shape)
    original = torch.linalg.svdvals(weight.double())
    kept = torch.linalg.svdvals(truncated(weight, r, method))
    torch.testing.assert_close(kept[: k - r], original[: k - r], rtol=1e-6, atol=0)
    assert kept[k - r:].max() < 1e-6 * original[0]


@pytest.mark.parametrize("shape", [(40, 16), (16, 40)])
@pytest.mark.parametrize("spectrum, uses_eigh", [
    (torch.linspace(2.0, 0.5, 16), True),
    (torch.cat([torch.logspace(0, -1, 11), torch.logspace(-3, -6, 5)]), True),  # 1..1e-6, cut in a gap
    (torch.logspace(0, -6, 16), True),  # 1..1e-6, geometric: gap at the cut ~1e-8 of lambda_max
    (torch.cat([torch.linspace(2.0, 1.1, 10), torch.tensor([1.0 + 1e-12, 1.0]), torch.linspace(0.9, 0.5, 4)]),
     False),  # singular values at the cut 1e-12 apart: the eigh route cannot tell them apart
])
def test_eigh_path_agrees_with_svd_path(shape, spectrum, uses_eigh, svd_calls):
    weight, r = with_spectrum(spectrum, shape).float(), 5
    by_eigh = truncated(weight, r, "eigh")
    assert (len(svd_calls) == 0) == uses_eigh
    assert rel_err(by_eigh, truncated(weight, r, "svd")) <= 1e-6
    assert rel_err(by_eigh, weight.double() - dropped_product(weight, r)) <= 1e-6


def test_repeated_singular_values_at_the_cut_fall_back_to_svd(svd_calls):
    weight, r = with_spectrum([3, 2.5, 2, 1.5, 1, 1, 0.5, 0.25], (12, 8)), 3  # s[k-r-1] == s[k-r] == 1
    dropped = truncate_smallest(weight, r, "eigh")
    assert svd_calls == [r]
    kept = torch.linalg.svdvals(weight - dropped.us.double() @ dropped.vt.double())
    torch.testing.assert_close(kept[:5], torch.tensor([3, 2.5, 2, 1.5, 1], dtype=torch.float64), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["eigh", "svd"])
def test_half_precision_weights_are_truncated_in_float64(dtype, method):
    weight, r = torch.randn(24, 40, generator=torch.Generator().manual_seed(3)).to(dtype), 6
    dropped = truncate_smallest(weight, r, method)
    assert dropped.us.dtype == dropped.vt.dtype == torch.float32
    assert (dropped.us.shape, dropped.vt.shape) == ((24, r), (r, 40))
    product = dropped.us.double() @ dropped.vt.double()
    assert rel_err(weight.double() - product, weight.double() - dropped_product(weight, r)) <= 1e-6
    assert rel_err(product, dropped_product(weight, r)) <= 1e-5


def test_r_not_below_k_raises_naming_the_shape():
    with pytest.raises(ValueError, match=r"r=16 is too large for a layer of shape \(out=16, in=40\)"):
        truncate_smallest(torch.randn(16, 40), 16)


def test_r_not_below_k_raises_naming_the_layer_before_any_change():
    model = tiny_llama()
    with pytest.raises(ValueError, match=r"layer 'model.layers.0.self_attn.k_proj' of shape \(out=16, in=32\)"):
        inject(model, KasaConfig(r=16, target_modules=("q_proj", "k_proj")))
    assert not hasattr(model, "_kasa_state")
    assert all(type(m).__module__.startswith(("torch", "transformers")) for m in model.modules())


def test_subset_eigensolver_matches_the_full_torch_decomposition(monkeypatch):
    """SciPy's subset solver (used when installed) and torch's full ``eigh`` give the same smallest pairs."""
    pytest.importorskip("scipy")
    generator = torch.Generator().manual_seed(3)
    w = torch.randn(40, 24, generator=generator, dtype=torch.float64)
    gram = w.T @ w
    values, vectors = truncation.smallest_eigenpairs(gram, 5)
    full_values, full_vectors = torch.linalg.eigh(gram)
    torch.testing.assert_close(values, full_values[:5], rtol=1e-12, atol=1e-12)
    # eigenvectors up to sign: compare the projectors
    torch.testing.assert_close(vectors @ vectors.T, full_vectors[:, :5] @ full_vectors[:, :5].T, rtol=0, atol=1e-10)

    monkeypatch.setattr(truncation, "_subset_solver", lambda: None)  # as if SciPy were absent
    torch_values, _ = truncation.smallest_eigenpairs(gram, 5)
    torch.testing.assert_close(torch_values, full_values[:5], rtol=0, atol=0)


@pytest.mark.parametrize("tail, warns", [(1e-3, False), (1.0, True)])
def test_a_truncation_that_removes_more_than_noise_is_announced(tail, warns):
    """Singular values 4, ..., 4 (14 of them) and a tail of two ``tail``: the dropped share of ``||W||_F`` is
    ``sqrt(2 tail^2 / (14 * 16 + 2 tail^2))`` (1e-3: 9e-5, silent; 1.0: 9.4%, announced)."""
    weight = with_spectrum([4.0] * 14 + [tail] * 2, (16, 24)).float()
    expected = (2 * tail**2 / (14 * 16 + 2 * tail**2)) ** 0.5
    assert truncation.dropped_share(weight, truncate_smallest(weight, 2)) == pytest.approx(expected, rel=1e-4)
    model = torch.nn.Sequential(torch.nn.Linear(24, 16))
    with torch.no_grad():
        model[0].weight.copy_(weight)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inject(model, KasaConfig(r=2, target_modules=("0",)))
    messages = [str(w.message) for w in caught if "truncation" in str(w.message)]
    assert len(messages) == warns
    if warns:
        assert f"removes more than 1% of the weight norm of 1 of 1 layers (most: {expected:.1%} of '0')" in messages[0]
        assert "drop_rank='auto'" in messages[0] and "kasa-peft inspect --model" in messages[0]
