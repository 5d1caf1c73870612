"""Controllable generation with an unconditional model: imputation (inpainting) by replacement, and the exact
conditional of a Gaussian mixture to check it against.

Chapter: "Diffusion as stochastic differential equations" (``chapters/diffusion_sde.ipynb``).

Imputation: the coordinates in ``mask`` are known, ``x_0[mask] = y``. Run ancestral sampling on all
coordinates, and after every step overwrite the known ones by a fresh sample of the forward process at the new
time, ``alpha_s y + sigma_s z``; the unknown ones then follow the model's score of the joint, which approximates
``grad log p_t(x_unknown | y)`` (Song et al. 2021, section 5 and appendix I.2). It is not exact: the replaced
coordinates are drawn from ``p_s(y_s | y)``, not from their posterior given the unknown ones.

References: Song et al., ICLR 2021 (controllable generation, imputation); Lugmayr et al., "RePaint", 2022.
"""

from __future__ import annotations

import torch

from lib.diffusion.predictions import Denoiser
from lib.diffusion.samplers import SampleResult, _coefs, _noise, _setup


@torch.no_grad()
def impute(
    denoiser: Denoiser,
    schedule,
    x_T: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    steps: int | None = None,
    *,
    ts: torch.Tensor | None = None,
    grid: str = "uniform",
    t_max: float = 1.0,
    t_min: float = 1e-3,
    generator: torch.Generator | None = None,
) -> SampleResult:
    """Sample ``x_0`` given ``x_0[..., mask] = y[..., mask]`` by ancestral sampling with replacement.

    ``mask`` (bool, broadcastable to ``x_T``) marks the known entries; ``y`` has ``x_T``'s shape (its unknown
    entries are ignored). The known entries of the result equal ``y`` exactly.
    """
    f, ts = _setup(denoiser, schedule, x_T, steps, ts, grid, t_max, t_min)
    if not torch.is_tensor(mask) or mask.dtype != torch.bool:
        raise TypeError("mask must be a bool tensor")
    if not torch.is_tensor(y) or y.shape != x_T.shape:
        raise ValueError(f"y must have x_T's shape {tuple(x_T.shape)}, got {getattr(y, 'shape', y)}")
    mask = mask.expand_as(x_T)
    a0, s0, _, _ = _coefs(schedule, ts[0], x_T)
    x = torch.where(mask, a0 * y + s0 * _noise(x_T, generator), x_T)
    for i in range(len(ts) - 1):
        t, s = ts[i], ts[i + 1]
        a_t, s_t, _, _ = _coefs(schedule, t, x)
        a_s, s_s, _, _ = _coefs(schedule, s, x)
        x0, eps = f(x, t)
        last = i == len(ts) - 2
        c = (
            torch.zeros_like(s_s)
            if last
            else ((s_t**2 - (a_t / a_s) ** 2 * s_s**2) * s_s**2 / s_t**2).clamp_min(0).sqrt()
        )
        x = a_s * x0 + (s_s**2 - c**2).clamp_min(0.0).sqrt() * eps + c * _noise(x, generator)
        x = torch.where(mask, y if last else a_s * y + s_s * _noise(x, generator), x)  # replace the known part
    return SampleResult(torch.where(mask, y, x), f.n)


def gmm_conditional(
    weights: torch.Tensor, means: torch.Tensor, covs: torch.Tensor, known: int, value: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact ``p(x_j | x_known = value)`` of a 2D Gaussian mixture (``j`` the other coordinate): a 1D mixture,
    returned as ``(weights (K,), means (K,), variances (K,))``."""
    if means.dim() != 2 or means.shape[1] != 2 or known not in (0, 1):
        raise ValueError("gmm_conditional is for 2D mixtures with known in {0, 1}")
    j = 1 - known
    c_kk, c_jk, c_jj = covs[:, known, known], covs[:, j, known], covs[:, j, j]
    logw = torch.log(weights) - 0.5 * ((value - means[:, known]) ** 2 / c_kk + torch.log(2 * torch.pi * c_kk))
    return torch.softmax(logw, 0), means[:, j] + c_jk / c_kk * (value - means[:, known]), c_jj - c_jk**2 / c_kk
