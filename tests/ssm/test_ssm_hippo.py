"""HiPPO matrices (lib/ssm/hippo.py): the LegS state is the Legendre projection of the history, reconstruction
improves with N, LegT tracks a sliding window, and LegS is normal plus low rank."""

import pytest
import torch

from lib.ssm import hippo


def f(s):
    return torch.sin(6 * s) + 0.5 * torch.cos(15 * s**2) + s


def test_legs_state_equals_quadrature_coefficients():
    for N in (4, 8):
        x = hippo.legs_ode(f, N, steps=1500)
        torch.testing.assert_close(x, hippo.legendre_coefficients(f, N, 0.0, 1.0), rtol=0, atol=1e-5)


def test_reconstruction_error_falls_with_N():
    s = torch.linspace(0, 1, 300, dtype=torch.float64)
    errs = [(hippo.reconstruct(hippo.legendre_coefficients(f, N, 0, 1), s, 0, 1) - f(s)).pow(2).mean().sqrt()
            for N in (4, 8, 16, 32)]  # fmt: skip
    assert all(b < a for a, b in zip(errs, errs[1:], strict=False)) and errs[-1] < 1e-8


def test_legt_tracks_the_window():
    x = hippo.legt_ode(f, 32, t1=2.0, theta=1.0, steps=2000)
    q = hippo.legendre_coefficients(f, 32, 1.0, 2.0)
    assert (x - q).abs().max() < 1e-2


def test_basis_is_orthonormal_and_legs_is_nplr():
    nodes, w = (torch.from_numpy(a) for a in __import__("numpy").polynomial.legendre.leggauss(40))
    G = hippo.basis(10, nodes)
    torch.testing.assert_close(0.5 * (G * w) @ G.T, torch.eye(10, dtype=torch.float64))
    S = hippo.legs_normal(8)
    torch.testing.assert_close(S + S.T, -torch.eye(8, dtype=torch.float64))  # -1/2 I + skew
    A, B = hippo.legt(5, theta=2.0)
    assert A.shape == (5, 5) and B.shape == (5,) and torch.linalg.eigvals(A).real.max() < 0


def test_errors():
    with pytest.raises(ValueError, match="N must be a positive int"):
        hippo.legs(0)
    with pytest.raises(ValueError, match="theta must be positive"):
        hippo.legt(4, theta=0.0)


def test_matrices_equal_the_closed_forms_entry_by_entry():
    N, theta = 6, 0.7
    r = [(2 * n + 1) ** 0.5 for n in range(N)]
    A, B = hippo.legs(N)
    for n in range(N):
        assert B[n].item() == pytest.approx(r[n])
        for k in range(N):
            want = -r[n] * r[k] if n > k else (-(n + 1) if n == k else 0.0)
            assert A[n, k].item() == pytest.approx(want, abs=1e-12)
    A, B = hippo.legt(N, theta=theta)
    for n in range(N):
        assert B[n].item() == pytest.approx(r[n] / theta)
        for k in range(N):
            sign = 1.0 if k < n else (-1.0) ** (n - k)
            assert A[n, k].item() == pytest.approx(-r[n] * r[k] * sign / theta, abs=1e-12)
