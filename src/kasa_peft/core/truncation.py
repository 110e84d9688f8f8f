"""Knowledge-based SVD truncation: the ``d`` smallest singular components of a weight.

For ``W`` (out x in) with thin SVD ``W = U S V^T`` (singular values descending) and ``k = min(out, in)``,
the dropped part is ``U_d S_d V_d^T`` with ``U_d = U[:, k-d:]`` etc., and ``W_world = W - U_d S_d V_d^T``.
The paper drops ``d = r`` (the adapter rank); ``KasaConfig.drop_rank`` chooses another fixed ``d`` or, under an
energy budget, ``d`` per weight (`drop_count_within`). ``d = 0`` drops nothing (empty factors).
It is kept as two factors ``us`` (out x d) and ``vt`` (d x in) whose product is ``U_d S_d V_d^T``; only the
product is defined (the SVD and tall-Gram routes give ``us = U_d S_d, vt = V_d^T`` up to a rotation, the wide
Gram route ``us = U_d, vt = S_d V_d^T``). The product does not depend on the sign ambiguity of singular
vectors (it equals ``W V_d V_d^T``), so it is reproducible.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from .config import KasaConfig, TruncationMethod

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

# The eigh path is trusted when its estimated relative error on the truncated weight is below this. An eigensolver
# with backward error ``k eps ||G||`` tilts the dropped subspace by ``theta <= k eps ||G|| / gap`` (Davis-Kahan,
# ``gap`` the eigen-gap at the cut), mixing in kept directions of singular value about ``sqrt(lambda_cut)``;
# the error of ``W - W V_d V_d^T`` is then about ``theta sqrt(r lambda_cut)``, relative to ``||W||_F``.
EIGH_TOLERANCE = 1e-7
# Truncation is meant to drop noise: above this share of ||W||_F the step-0 model is no longer the base model.
LARGE_TRUNCATION = 0.01


class DroppedComponents(NamedTuple):
    """The ``d`` smallest singular components of a weight as ``us @ vt`` (see the module docstring), in float32."""

    us: torch.Tensor
    vt: torch.Tensor


def dropped_share(weight: torch.Tensor, dropped: DroppedComponents) -> float:
    """``||U_d S_d V_d^T||_F / ||W||_F``, from r x r Grams: ``||us vt||_F^2 = trace((us^T us)(vt vt^T))``."""
    us, vt = dropped.us.double(), dropped.vt.double()
    energy = ((us.T @ us) * (vt @ vt.T)).sum().clamp_min(0)
    norm: torch.Tensor = torch.linalg.vector_norm(weight.detach(), dtype=torch.float64).cpu()
    return (energy.sqrt() / norm.clamp_min(torch.finfo(torch.float64).tiny)).item()


def warn_if_large(shares: dict[str, float], config: KasaConfig) -> None:
    """Warn when truncation removes more than ``LARGE_TRUNCATION`` of some weights: their minor components are
    not noise (small or flat-spectrum matrices), and the untrained adapter no longer computes the base model."""
    large = {name: share for name, share in shares.items() if share > LARGE_TRUNCATION}
    if large:
        worst = max(large, key=large.__getitem__)
        warnings.warn(f"KaSA's truncation (r={config.r}, drop_rank={config.drop_rank!r}) removes more than "
                      f"{LARGE_TRUNCATION:.0%} of the weight norm of {len(large)} of {len(shares)} layers (most: "
                      f"{large[worst]:.1%} of '{worst}'), so the model differs from the base before training. "
                      "drop_rank='auto' (--drop-rank auto) drops per weight only what fits a norm budget; "
                      "kasa_peft.analysis.truncation_report (`kasa-peft inspect --model ...`) shows it per layer "
                      "before any training", stacklevel=3)


def check_rank(count: int, out_features: int, in_features: int, layer_name: str = "", setting: str = "r") -> None:
    """Refuse to drop ``count >= k`` components of an (out, in) weight; ``setting`` names the option that set it."""
    k = min(out_features, in_features)
    if count >= k:
        where = f"layer '{layer_name}' " if layer_name else "a layer "
        raise ValueError(
            f"{setting}={count} is too large for {where}of shape (out={out_features}, in={in_features}): KaSA drops "
            f"{setting} of its k=min(out, in)={k} singular components and needs {setting} < k. Use {setting} <= "
            f"{k - 1} or exclude this layer (exclude_modules)."
        )


def check_drop(config: KasaConfig, out_features: int, in_features: int, layer_name: str = "") -> None:
    """The checks ``truncate_for`` would fail, before anything is computed (``"auto"`` never exceeds ``k - 1``)."""
    if config.drop_rank == "r":
        check_rank(config.r, out_features, in_features, layer_name)
    elif config.drop_rank != "auto":
        check_rank(config.drop_rank, out_features, in_features, layer_name, setting="drop_rank")


def truncate_for(weight: torch.Tensor, config: KasaConfig) -> DroppedComponents:
    """The components ``config`` drops from ``weight`` (its ``drop_rank`` / ``drop_budget``)."""
    count, budget = config.drop_target()
    return truncate_smallest(weight, count, config.truncation, budget)


def drop_count_within(tail_energies: torch.Tensor, total_energy: float | torch.Tensor, budget: float) -> int:
    """The largest ``d`` with ``sqrt(e_1 + ... + e_d) <= budget * sqrt(total_energy)``.

    ``tail_energies`` are the smallest squared singular values, ascending (``s_k^2, s_{k-1}^2, ...``), and
    ``total_energy = ||W||_F^2``: ``d`` components may go when their norm is at most ``budget`` of ``||W||_F``.
    """
    shares_squared = tail_energies.double().clamp_min(0).cumsum(0) / total_energy
    return int((shares_squared <= budget * budget).sum())


def truncate_smallest(weight: torch.Tensor, r: int, method: TruncationMethod = "eigh",
                      budget: float | None = None) -> DroppedComponents:
    """The ``r`` smallest singular components of ``weight`` (out x in), computed in float64.

    With a ``budget`` in (0, 1), ``r`` is a cap: the result holds the largest ``d <= min(r, k - 1)`` components
    whose norm is at most ``budget * ||W||_F`` (`drop_count_within`; possibly none: ``d = 0``, empty factors).
    ``method="eigh"`` diagonalises the smaller Gram matrix and falls back to ``"svd"`` when the spectral gap
    at the cut is too small for the Gram route to be accurate; both are exact up to float64 rounding.
    """
    if budget is None:
        check_rank(r, *weight.shape)
    else:
        r = min(r, min(weight.shape) - 1)
    w = weight.detach().to(torch.float64)
    if r == 0:
        return DroppedComponents(w.new_empty(w.shape[0], 0, dtype=torch.float32),
                                 w.new_empty(0, w.shape[1], dtype=torch.float32))
    dropped = _smallest_by_eigh(w, r, budget) if method == "eigh" else None
    if dropped is None:
        dropped = _smallest_by_svd(w, r, budget)
    return DroppedComponents(dropped[0].float().contiguous(), dropped[1].float().contiguous())


def _smallest_by_svd(w: torch.Tensor, r: int, budget: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    if budget is not None:
        r = drop_count_within(s[-r:].flip(0).square(), s.square().sum(), budget)
    k = s.shape[0]
    return u[:, k - r:] * s[k - r:], vh[k - r:]


def _smallest_by_eigh(w: torch.Tensor, r: int, budget: float | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Gram route: the r smallest eigenvectors of ``W^T W`` (or ``W W^T``) span ``V_d`` (or ``U_d``).

    Returns ``None`` when the gap between the last dropped and first kept eigenvalue is too small
    relative to rounding, so the caller falls back to the SVD.
    """
    out_features, in_features = w.shape
    tall = out_features >= in_features
    gram = w.T @ w if tall else w @ w.T
    eigenvalues, eigenvectors = smallest_eigenpairs(gram, r + 1)
    if budget is not None:
        r = drop_count_within(eigenvalues[:r], gram.trace(), budget)
        if r == 0:
            return w[:, :0], w[:0]
    cut, gap = eigenvalues[r], eigenvalues[r] - eigenvalues[r - 1]
    if gap <= 0:
        return None
    tilt = gram.shape[0] * torch.finfo(torch.float64).eps * torch.linalg.matrix_norm(gram) / gap
    if tilt * (r * cut).sqrt() > EIGH_TOLERANCE * gram.trace().sqrt():  # trace(G) = ||W||_F^2
        return None
    basis = eigenvectors[:, :r]
    if tall:  # basis = V_d (in x r): W V_d V_d^T
        return w @ basis, basis.T
    return basis, basis.T @ w  # basis = U_d (out x r): U_d U_d^T W


def smallest_eigenpairs(symmetric: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` smallest eigenvalues (ascending) and eigenvectors of a symmetric float64 matrix.

    On the CPU, when SciPy is installed, LAPACK's subset solver (``dsyevr``) computes only those, two to three
    times faster than a full ``torch.linalg.eigh``; otherwise the full decomposition is sliced. Same result.
    """
    solver = _subset_solver() if symmetric.device.type == "cpu" else None
    if solver is None:
        values, vectors = torch.linalg.eigh(symmetric)
        return values[:count], vectors[:, :count]
    eigh, threadpools = solver
    # one BLAS thread: SciPy's OpenBLAS threads next to other OpenMP runtimes in the process can stall 100-fold
    with threadpools.limit(limits=1, user_api="blas"):
        values, vectors = eigh(symmetric.numpy(), subset_by_index=[0, count - 1], driver="evr")
    return torch.from_numpy(values), torch.from_numpy(vectors)


@functools.cache
def _subset_solver() -> tuple[Callable[..., tuple[NDArray[np.float64], NDArray[np.float64]]], Any] | None:
    """SciPy's ``eigh`` and a threadpoolctl controller of the loaded BLAS libraries, if both are installed."""
    try:
        from scipy.linalg import eigh
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return eigh, ThreadpoolController()
