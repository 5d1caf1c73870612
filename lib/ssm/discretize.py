"""Discretising the continuous SSM ``x' = A x + B u, y = C x + D u``, and its two computations: recurrence and
convolution.

Gu et al. (2022), "S4", section 2; Gu et al. (2021), "LSSL" for the bilinear (Tustin) rule. Chapter: "State
space models" (``chapters/ssm.ipynb``).

Glossary
--------
dt                 step size Delta
A_bar, B_bar       discrete matrices: ``x_k = A_bar x_{k-1} + B_bar u_k``, ``y_k = C x_k + D u_k``
zoh                zero-order hold: ``u`` constant over each step; ``A_bar = exp(dt A)``,
                   ``B_bar = A^{-1} (exp(dt A) - I) B`` (computed as a block of ``exp([[A, B], [0, 0]] dt)``)
bilinear           trapezoid rule: ``A_bar = (I - dt/2 A)^{-1} (I + dt/2 A)``, ``B_bar = (I - dt/2 A)^{-1} dt B``
K                  convolution kernel ``(C B_bar, C A_bar B_bar, C A_bar^2 B_bar, ...)``, so ``y = K * u + D u``
"""

from __future__ import annotations

import torch


def _check_AB(A: torch.Tensor, B: torch.Tensor, dt: float) -> None:
    if not torch.is_tensor(A) or A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be a square (N, N) tensor, got {getattr(A, 'shape', type(A).__name__)}")
    if not torch.is_tensor(B) or B.shape != A.shape[:1]:
        raise ValueError(f"B must have shape ({A.shape[0]},), got {getattr(B, 'shape', type(B).__name__)}")
    if not float(dt) > 0:
        raise ValueError(f"dt must be positive, got {dt!r}")


def zoh(A: torch.Tensor, B: torch.Tensor, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-order hold: exact for inputs constant over each step. ``B_bar`` is read from the matrix exponential
    of the augmented matrix ``[[A, B], [0, 0]] dt`` (valid even when ``A`` is singular)."""
    _check_AB(A, B, dt)
    N = A.shape[0]
    M = torch.zeros(N + 1, N + 1, dtype=A.dtype)
    M[:N, :N], M[:N, N] = A, B
    E = torch.linalg.matrix_exp(M * dt)
    return E[:N, :N], E[:N, N]


def zoh_closed_form(A: torch.Tensor, B: torch.Tensor, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ZOH by its closed form ``(exp(dt A), A^{-1} (exp(dt A) - I) B)`` (needs an invertible ``A``)."""
    _check_AB(A, B, dt)
    A_bar = torch.linalg.matrix_exp(dt * A)
    return A_bar, torch.linalg.solve(A, (A_bar - torch.eye(A.shape[0], dtype=A.dtype)) @ B)


def bilinear(A: torch.Tensor, B: torch.Tensor, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear (Tustin) rule, from the trapezoid rule ``x_k - x_{k-1} = dt/2 (A x_k + A x_{k-1}) + dt B u_k``."""
    _check_AB(A, B, dt)
    eye = torch.eye(A.shape[0], dtype=A.dtype)
    left = eye - dt / 2 * A
    return torch.linalg.solve(left, eye + dt / 2 * A), torch.linalg.solve(left, dt * B)


def recurrence(A_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor, u: torch.Tensor, D: float = 0.0):
    """``y_k = C x_k + D u_k``, ``x_k = A_bar x_{k-1} + B_bar u_k``, ``x_{-1} = 0``. u: ``(..., L)``."""
    x = torch.zeros(*u.shape[:-1], A_bar.shape[0], dtype=A_bar.dtype)
    ys = []
    for k in range(u.shape[-1]):
        x = x @ A_bar.T + u[..., k, None] * B_bar
        ys.append(x @ C)
    return torch.stack(ys, -1) + D * u


def kernel(A_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor, L: int) -> torch.Tensor:
    """``K = (C B_bar, C A_bar B_bar, ..., C A_bar^{L-1} B_bar)``, shape ``(L,)``."""
    if not isinstance(L, int) or L < 1:
        raise ValueError(f"L must be a positive int, got {L!r}")
    out, v = [], B_bar
    for _ in range(L):
        out.append(C @ v)
        v = A_bar @ v
    return torch.stack(out)


def convolve(K: torch.Tensor, u: torch.Tensor, D: float = 0.0) -> torch.Tensor:
    """``y = K * u + D u`` (causal, FFT); u: ``(..., L)``, K: ``(L,)``."""
    from lib.ssm.s4d import fft_conv

    return fft_conv(u[..., None, :], K[None]).squeeze(-2) + D * u


def rk4(rhs, x0: torch.Tensor, t0: float, t1: float, steps: int) -> torch.Tensor:
    """Classical fourth-order Runge-Kutta with ``steps`` fixed steps from ``t0`` to ``t1``; returns ``x(t1)``."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    h, x = (t1 - t0) / steps, x0
    for i in range(steps):
        t = t0 + i * h
        k1 = rhs(t, x)
        k2 = rhs(t + h / 2, x + h / 2 * k1)
        k3 = rhs(t + h / 2, x + h / 2 * k2)
        k4 = rhs(t + h, x + h * k3)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def ode_solution(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, u, dt: float, L: int, D: float = 0.0,
                 substeps: int = 20) -> torch.Tensor:  # fmt: skip
    """Reference: ``y(k dt)``, ``k = 1..L``, of the continuous SSM from ``x(0) = 0`` by a fine RK4 solve
    (``substeps`` per step). ``u`` is a function of time, or a tensor ``(L,)`` of inputs held constant on each
    step ``((k-1) dt, k dt]`` (the zero-order-hold assumption)."""
    x, ys = torch.zeros(A.shape[0], dtype=A.dtype), []
    for k in range(L):
        if torch.is_tensor(u):
            rhs = lambda t, x, v=u[k]: A @ x + B * v
            y_u = u[k]
        else:
            rhs = lambda t, x: A @ x + B * u(torch.tensor(t, dtype=A.dtype))
            y_u = u(torch.tensor((k + 1) * dt, dtype=A.dtype))
        x = rk4(rhs, x, k * dt, (k + 1) * dt, substeps)
        ys.append(x @ C + D * y_u)
    return torch.stack(ys)
