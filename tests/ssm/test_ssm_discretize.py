"""Discretisation and the two computations of an LTI SSM (lib/ssm/discretize.py)."""

import pytest
import torch

from lib.ssm import discretize as dz
from lib.ssm.hippo import legt


def _system(N=6, seed=0):
    A, B = legt(N)
    return A, B, torch.randn(N, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_zoh_matches_closed_form_and_exact_ode_solution():
    A, B, C = _system()
    dt, L = 0.01, 120
    Ab, Bb = dz.zoh(A, B, dt)
    Ab2, Bb2 = dz.zoh_closed_form(A, B, dt)
    torch.testing.assert_close(Ab, torch.linalg.matrix_exp(dt * A))
    torch.testing.assert_close(Bb, Bb2)
    uk = torch.randn(L, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    y = dz.ode_solution(A, B, C, uk, dt, L, substeps=8)  # input held on each step: exact for ZOH
    torch.testing.assert_close(dz.recurrence(Ab, Bb, C, uk), y, rtol=0, atol=1e-8)


def test_bilinear_is_second_order():
    A, B, C = _system()
    errs = []
    for dt in (0.02, 0.01):
        L = round(1 / dt)
        t = torch.arange(L + 1, dtype=torch.float64) * dt
        y = dz.ode_solution(A, B, C, lambda s: torch.sin(5 * s), dt, L, substeps=4)
        Ab, Bb = dz.bilinear(A, B, dt)
        u_mid = (torch.sin(5 * t[1:]) + torch.sin(5 * t[:-1])) / 2
        errs.append((dz.recurrence(Ab, Bb, C, u_mid) - y).abs().max())
    assert 3.5 < errs[0] / errs[1] < 4.5


@pytest.mark.parametrize("L", [1, 7, 100, 257])
def test_convolution_equals_recurrence(L):
    A, B, C = _system()
    Ab, Bb = dz.zoh(A, B, 0.05)
    u = torch.randn(3, L, generator=torch.Generator().manual_seed(L), dtype=torch.float64)
    K = dz.kernel(Ab, Bb, C, L)
    torch.testing.assert_close(dz.convolve(K, u, D=0.3), dz.recurrence(Ab, Bb, C, u, D=0.3))


def test_errors():
    A, B, _ = _system()
    with pytest.raises(ValueError, match="A must be a square"):
        dz.zoh(A[:2], B, 0.1)
    with pytest.raises(ValueError, match="B must have shape"):
        dz.bilinear(A, B[:2], 0.1)
    with pytest.raises(ValueError, match="dt must be positive"):
        dz.zoh(A, B, 0.0)
    with pytest.raises(ValueError, match="L must be a positive int"):
        dz.kernel(A, B, B, 0)
