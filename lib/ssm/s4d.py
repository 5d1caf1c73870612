"""S4D: diagonal state space models, their initialisations and the Vandermonde convolution kernel.

Gu et al. (2022), "On the Parameterization and Initialization of Diagonal State Space Models" (S4D), sections 3-4;
Gu et al. (2022), "Efficiently Modeling Long Sequences with Structured State Spaces" (S4). Chapter: "State space
models" (``chapters/ssm.ipynb``).

With a diagonal ``A = diag(lambda_n)`` (complex, in conjugate pairs so only half are stored) and ZOH step ``dt``,
the convolution kernel of ``x' = A x + B u, y = C x`` is a Vandermonde product::

    K[l] = 2 Re sum_n C_n B_bar_n exp(dt lambda_n)^l,   B_bar_n = (exp(dt lambda_n) - 1) / lambda_n * B_n

Glossary
--------
lambda_   ``(H, N/2)`` complex diagonal of A (``lambda`` is a Python keyword)
log_dt    ``(H,)`` log step sizes, one per channel
H, N      channels and state size (real dimension; ``N/2`` complex modes)
"""

from __future__ import annotations

import math

import torch
from torch import nn

INITS = ("lin", "inv", "real", "legs")


def s4d_lambda(N: int, init: str = "lin") -> torch.Tensor:
    """The ``N/2`` complex eigenvalues of an S4D initialisation.

    ``"lin"`` (S4D-Lin): ``-1/2 + i pi n``; ``"inv"`` (S4D-Inv): ``-1/2 + i N/pi (N/(2n+1) - 1)``;
    ``"real"`` (S4D-Real): ``-(n + 1)``, real; ``"legs"``: the eigenvalues of the normal part of HiPPO-LegS
    (``-1/2`` plus the imaginary spectrum), as S4D-LegS.
    """
    if not isinstance(N, int) or N < 2 or N % 2:
        raise ValueError(f"N must be an even int >= 2, got {N!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    n = torch.arange(N // 2, dtype=torch.float64)
    if init == "lin":
        lam = torch.complex(-0.5 * torch.ones_like(n), math.pi * n)
    elif init == "inv":
        lam = torch.complex(-0.5 * torch.ones_like(n), N / math.pi * (N / (2 * n + 1) - 1))
    elif init == "real":
        lam = torch.complex(-(n + 1), torch.zeros_like(n))
    else:
        from lib.ssm.hippo import legs_normal

        eig = torch.linalg.eigvals(legs_normal(N))
        eig = eig[eig.imag >= 0] if (eig.imag >= 0).sum() == N // 2 else eig[: N // 2]
        lam = torch.complex(-0.5 * torch.ones(N // 2, dtype=torch.float64), eig.imag.sort().values)
    return lam


def vandermonde_kernel(lambda_: torch.Tensor, B: torch.Tensor, C: torch.Tensor, log_dt: torch.Tensor, L: int):
    """S4D's convolution kernel ``K (H, L)`` by ZOH and a Vandermonde product.

    Args:
        lambda_: ``(H, N/2)`` complex eigenvalues; B, C: ``(H, N/2)`` complex; log_dt: ``(H,)``.
        L: kernel length.
    """
    if lambda_.dim() != 2 or not lambda_.is_complex():
        raise ValueError(f"lambda_ must be a complex (H, N/2) tensor, got {lambda_.dtype} {tuple(lambda_.shape)}")
    for name, t in (("B", B), ("C", C)):
        if t.shape != lambda_.shape:
            raise ValueError(f"{name} must have the shape of lambda_ {tuple(lambda_.shape)}, got {tuple(t.shape)}")
    if log_dt.shape != lambda_.shape[:1]:
        raise ValueError(f"log_dt must have shape ({lambda_.shape[0]},), got {tuple(log_dt.shape)}")
    if not isinstance(L, int) or L < 1:
        raise ValueError(f"L must be a positive int, got {L!r}")
    dt_lambda = log_dt.exp()[:, None] * lambda_  # (H, N/2)
    B_bar = (torch.exp(dt_lambda) - 1) / lambda_ * B
    vander = torch.exp(dt_lambda[..., None] * torch.arange(L, device=lambda_.device))  # (H, N/2, L)
    return 2 * torch.einsum("hn,hnl->hl", C * B_bar, vander).real


def fft_conv(u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Causal convolution ``y[l] = sum_{j<=l} K[j] u[l-j]`` along the last axis by FFT (zero-padded to 2L).

    u: ``(..., H, L)``; K: ``(H, L)``."""
    L = u.shape[-1]
    if K.shape[-1] != L or K.shape[0] != u.shape[-2]:
        raise ValueError(f"K must have shape (H={u.shape[-2]}, L={L}), got {tuple(K.shape)}")
    n = 2 * L
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(K, n=n), n=n)[..., :L]


class S4DKernel(nn.Module):
    """The LTI convolution of S4D with trainable ``lambda_`` (real part kept negative), ``B``, ``C``, ``log_dt``.

    ``forward(u (batch, H, L)) -> y (batch, H, L)`` (no skip term: callers add ``D u``).
    """

    def __init__(self, H: int, N: int = 16, init: str = "lin", dt_min: float = 1e-3, dt_max: float = 1e-1) -> None:
        super().__init__()
        if not isinstance(H, int) or H < 1:
            raise ValueError(f"H must be a positive int, got {H!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        lam = s4d_lambda(N, init).to(torch.complex64).expand(H, -1)
        self.log_neg_re = nn.Parameter(torch.log(-lam.real).clone().float())  # Re lambda = -exp(.) < 0
        self.im = nn.Parameter(lam.imag.clone().float())
        self.log_dt = nn.Parameter(torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        c = torch.randn(H, N // 2, dtype=torch.complex64) * math.sqrt(0.5)
        self.C = nn.Parameter(torch.view_as_real(c).clone())  # (H, N/2, 2)
        self.B = nn.Parameter(torch.view_as_real(torch.ones(H, N // 2, dtype=torch.complex64)).clone())

    @property
    def lambda_(self) -> torch.Tensor:
        return torch.complex(-self.log_neg_re.exp(), self.im)

    def kernel(self, L: int) -> torch.Tensor:
        """``K (H, L)``."""
        B, C = torch.view_as_complex(self.B), torch.view_as_complex(self.C)
        return vandermonde_kernel(self.lambda_, B, C, self.log_dt, L)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return fft_conv(u, self.kernel(u.shape[-1]))
