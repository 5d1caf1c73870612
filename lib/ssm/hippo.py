"""HiPPO: online function approximation by projection onto Legendre polynomials.

Gu et al. (2020), "HiPPO: Recurrent Memory with Optimal Polynomial Projections", section 2 and appendix D
(LegT: a sliding window of length theta; LegS: the whole history, scaled). Chapter: "State space models"
(``chapters/ssm.ipynb``).

Both are written for *normalised* coefficients on the orthonormal basis ``g_n = sqrt(2n+1) P_n(z)`` (``P_n`` the
Legendre polynomials, ``z`` the position in the window mapped to [-1, 1]), so that ``f(s) ~ sum_n x_n g_n(s)``::

    LegT:  x'(t) = A x(t) + B f(t),            window [t - theta, t]   (approximate: f(t - theta) is reconstructed)
    LegS:  x'(t) = (A x(t) + B f(t)) / t,      window [0, t]           (exact)

Glossary
--------
N        number of coefficients (polynomial degree N - 1)
x_n(t)   ``(1/|window|) int_window f(s) g_n(s) ds``, the n-th Legendre coefficient of the history
"""

from __future__ import annotations

import numpy as np
import torch


def _check_N(N: int) -> None:
    if not isinstance(N, int) or isinstance(N, bool) or N < 1:
        raise ValueError(f"N must be a positive int, got {N!r}")


def legt(N: int, theta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """HiPPO-LegT ``(A (N, N), B (N,))`` in float64, window length ``theta``::

    A_nk = -(1/theta) sqrt(2n+1) sqrt(2k+1) * (1 if k < n else (-1)^(n-k)),   B_n = (1/theta) sqrt(2n+1)
    """
    _check_N(N)
    if not theta > 0:
        raise ValueError(f"theta must be positive, got {theta!r}")
    n = torch.arange(N, dtype=torch.float64)
    r = torch.sqrt(2 * n + 1)
    i, k = n[:, None], n[None, :]
    sign = torch.where(k < i, torch.ones(N, N, dtype=torch.float64), (-1.0) ** (i - k))
    return -(r[:, None] * sign * r[None, :]) / theta, r / theta


def legs(N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HiPPO-LegS ``(A (N, N), B (N,))`` in float64 (the dynamics are ``x' = (A x + B f) / t``)::

    A_nk = -sqrt(2n+1) sqrt(2k+1) if n > k,  -(n+1) if n = k,  0 if n < k;    B_n = sqrt(2n+1)
    """
    _check_N(N)
    n = torch.arange(N, dtype=torch.float64)
    r = torch.sqrt(2 * n + 1)
    A = torch.tril(r[:, None] * r[None, :], diagonal=-1) + torch.diag(n + 1)
    return -A, r


def legs_normal(N: int) -> torch.Tensor:
    """The normal part of HiPPO-LegS: ``A + (1/2) r r^T`` (``r_n = sqrt(2n+1)``) is ``-1/2`` plus a skew-symmetric
    matrix, so ``A = (normal) - (1/2) r r^T`` is normal plus low rank (S4's NPLR structure)."""
    A, r = legs(N)
    return A + 0.5 * r[:, None] * r[None, :]


def basis(N: int, z: torch.Tensor) -> torch.Tensor:
    """Orthonormal Legendre basis ``g_n(z) = sqrt(2n+1) P_n(z)`` on [-1, 1], shape ``(N, len(z))`` float64.
    ``(1/2) int_{-1}^{1} g_n g_m dz = delta_nm``."""
    _check_N(N)
    z = torch.as_tensor(z, dtype=torch.float64)
    P = [torch.ones_like(z), z]
    for n in range(1, N - 1):  # Bonnet's recursion: (n+1) P_{n+1} = (2n+1) z P_n - n P_{n-1}
        P.append(((2 * n + 1) * z * P[n] - n * P[n - 1]) / (n + 1))
    r = torch.sqrt(2 * torch.arange(N, dtype=torch.float64) + 1)
    return r[:, None] * torch.stack(P[:N])


def legendre_coefficients(f, N: int, t0: float, t1: float, points: int = 200) -> torch.Tensor:
    """``x_n = (1/(t1-t0)) int_{t0}^{t1} f(s) g_n(z(s)) ds`` by Gauss-Legendre quadrature (``z`` maps [t0, t1]
    to [-1, 1]); ``f`` takes and returns float64 tensors. Shape ``(N,)``."""
    _check_N(N)
    nodes, weights = np.polynomial.legendre.leggauss(points)
    z, w = torch.from_numpy(nodes), torch.from_numpy(weights)
    s = t0 + (z + 1) * (t1 - t0) / 2
    return 0.5 * (basis(N, z) * (w * f(s))).sum(-1)


def reconstruct(x: torch.Tensor, s: torch.Tensor, t0: float, t1: float) -> torch.Tensor:
    """``f(s) ~ sum_n x_n g_n(z(s))`` for ``s`` in the window [t0, t1]."""
    z = 2 * (torch.as_tensor(s, dtype=torch.float64) - t0) / (t1 - t0) - 1
    return x @ basis(x.shape[-1], z)


def legs_ode(f, N: int, t1: float = 1.0, t0: float = 1e-6, steps: int = 4000) -> torch.Tensor:
    """Solve LegS, ``x' = (A x + B f(t)) / t``, from ``t0`` (with ``x(t0) = f(0) e_0``) to ``t1``, by RK4 in
    log-time ``s = log t`` (where the system reads ``dx/ds = A x + B f(e^s)``, free of the 1/t singularity);
    returns ``x(t1)`` ``(N,)``."""
    import math

    from lib.ssm.discretize import rk4

    A, B = legs(N)
    x0 = torch.zeros(N, dtype=torch.float64)
    x0[0] = float(f(torch.zeros((), dtype=torch.float64)))

    def rhs(s, x):
        return A @ x + B * f(torch.tensor(math.exp(s), dtype=torch.float64))

    return rk4(rhs, x0, math.log(t0), math.log(t1), steps)


def legt_ode(f, N: int, t1: float = 1.0, theta: float = 1.0, steps: int = 4000) -> torch.Tensor:
    """Solve LegT, ``x' = A x + B f(t)``, from ``x(0) = 0`` to ``t1`` by RK4 (``f`` is taken as 0 before 0)."""
    from lib.ssm.discretize import rk4

    A, B = legt(N, theta)

    def rhs(t, x):
        return A @ x + B * f(torch.tensor(t, dtype=torch.float64))

    return rk4(rhs, torch.zeros(N, dtype=torch.float64), 0.0, t1, steps)
