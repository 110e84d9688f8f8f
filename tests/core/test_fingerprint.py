"""The base-weight fingerprint, against its definition evaluated with numpy."""

import numpy as np
import torch

from kasa_peft.core.fingerprint import FINGERPRINT_TOLERANCE, fingerprint_tolerance, weight_fingerprint


def test_the_fingerprint_is_the_norm_and_three_cosine_projections():
    w = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    rows, cols = np.arange(5), np.arange(7)
    expected = [np.linalg.norm(w.double().numpy())]
    for i in range(3):  # u_i[j] = cos(0.37 (i + 1) j + i), v_i[j] = cos(0.61 (i + 1) j + 2 i)
        u = np.cos(0.37 * (i + 1) * rows + 1 * i)
        v = np.cos(0.61 * (i + 1) * cols + 2 * i)
        expected.append(u @ w.double().numpy() @ v)
    fingerprint = weight_fingerprint(w)
    assert fingerprint.dtype == torch.float64
    np.testing.assert_allclose(fingerprint.numpy(), expected, rtol=1e-12)


def test_bf16_rounding_stays_within_the_tolerance_and_another_weight_does_not():
    w = torch.randn(64, 48, generator=torch.Generator().manual_seed(1))
    other = torch.randn(64, 48, generator=torch.Generator().manual_seed(2))

    def distance(a: torch.Tensor, b: torch.Tensor) -> float:
        reference = weight_fingerprint(a)
        return float((weight_fingerprint(b) - reference).abs().max() / reference[0])

    assert distance(w, w.bfloat16().float()) < FINGERPRINT_TOLERANCE
    assert distance(w, other) > 10 * FINGERPRINT_TOLERANCE
    assert fingerprint_tolerance(torch.nn.Linear(3, 2)) == FINGERPRINT_TOLERANCE  # a float layer: the float bound
