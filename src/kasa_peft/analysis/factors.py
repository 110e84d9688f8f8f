"""A KaSA adapter's weight change as low-rank factor pairs, and norms computed from the factors.

For one layer, with ``A`` (r x in), ``B`` (out x r), ``sigma`` (r), the ``d`` dropped components ``us``
(out x d), ``vt`` (d x in) and ``scale``:

    update    = scale B diag(sigma) A              = P_u Q_u,  P_u = B diag(scale sigma),  Q_u = A
    truncation = us vt                             (U_d S_d V_d^T, what was removed from W)
    delta     = update - truncation                = P Q,      P = [P_u, -us] (out x (r+d)), Q = [A; vt] ((r+d) x in)

so the whole change of the original weight is one rank-(r + d) pair, exactly (2r with the paper's d = r).
"""

from __future__ import annotations

import torch


def update_factors(A: torch.Tensor, B: torch.Tensor, sigma: torch.Tensor,
                   scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B diag(scale sigma), A)``: the update ``scale B diag(sigma) A`` as one pair."""
    return B * (scale * sigma), A


def delta_factors(A: torch.Tensor, B: torch.Tensor, sigma: torch.Tensor, dropped_us: torch.Tensor,
                  dropped_vt: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P, Q)`` with ``P Q = scale B diag(sigma) A - us vt`` (module docstring)."""
    p_update, q_update = update_factors(A, B, sigma, scale)
    p = torch.cat([p_update, -dropped_us.to(p_update.dtype)], dim=1)
    q = torch.cat([q_update, dropped_vt.to(q_update.dtype)], dim=0)
    return p.detach().contiguous(), q.detach().contiguous()


def product_singular_values(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The singular values of ``P Q`` (descending) from two r x r factors: ``P = Q_p R_p``, ``Q^T = Q_q R_q``
    (thin QR) give ``P Q = Q_p (R_p R_q^T) Q_q^T``, so they are those of ``R_p R_q^T``. In float64.

    It does not assume how a product was split (``U_d S_d`` and ``V_d^T``, or ``U_d`` and ``S_d V_d^T``).
    """
    r_p = torch.linalg.qr(p.detach().double()).R
    r_q = torch.linalg.qr(q.detach().double().T).R
    return torch.linalg.svdvals(r_p @ r_q.T)


def product_norm(p: torch.Tensor, q: torch.Tensor) -> float:
    """``||P Q||_F`` without forming ``P Q``: ``sqrt(sum((P^T P) * (Q Q^T)))``, in float64."""
    p, q = p.detach().double(), q.detach().double()
    return float(((p.T @ p) * (q @ q.T)).sum().clamp_min(0).sqrt())
