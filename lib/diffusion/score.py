"""Exact scores and denoisers of Gaussian mixtures under any schedule, and the denoising score-matching
identity checked by quadrature.

Chapter: "Diffusion as stochastic differential equations" (``chapters/diffusion_sde.ipynb``); the tests of every
sampler, and the Flows and Guidance chapters, use these exact denoisers as oracles.

References: Vincent, "A Connection Between Score Matching and Denoising Autoencoders", 2011 (the DSM
identity); Hyvarinen 2005 (score matching); Efron 2011 (Tweedie's formula).

Glossary (``x_t = alpha x_0 + sigma eps``; ``p_0 = sum_k w_k N(m_k, C_k)``)
--------
C_k(t)        ``alpha^2 C_k + sigma^2 I``: component ``k``'s covariance at time ``t``
r_k(x_t)      responsibility of component ``k`` for ``x_t``
score         ``grad log p_t = -sum_k r_k C_k(t)^{-1} (x_t - alpha m_k)``
x0_hat        ``E[x_0 | x_t] = sum_k r_k (m_k + alpha C_k C_k(t)^{-1} (x_t - alpha m_k))``: finite at ``alpha = 0``
eps_hat       ``E[eps | x_t] = sigma sum_k r_k C_k(t)^{-1} (x_t - alpha m_k)``: finite at ``sigma = 0``
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lib.data.toy2d import check_mixture
from lib.diffusion.predictions import Denoiser, check_prediction, from_x0_eps
from lib.diffusion.schedules import Schedule, as_time

# --- exact scores ---------------------------------------------------------------------------------------


def _gmm_marginal(x, t, sde, weights, means, covs):
    """Per-component marginal at time t: log w_k N(x; alpha m_k, alpha^2 C_k + sigma^2 I) and C^{-1}(x - mu)."""
    if not torch.is_tensor(x) or x.dim() != 2:
        raise ValueError(f"x must have shape (n, d), got {getattr(x, 'shape', None)}")
    check_mixture(weights, means, covs)
    if means.shape[1] != x.shape[1]:
        raise ValueError(f"means have dimension {means.shape[1]} but x has {x.shape[1]}")
    t = as_time(t, x)
    d = x.shape[1]
    means, covs, weights = means.to(x), covs.to(x), weights.to(x)
    if bool((t == t[0]).all()):  # one time for the whole batch (samplers): K factorisations, not n K
        t = t[:1]
    a, s2 = sde.alpha(t), sde.sigma(t) ** 2  # (n,) or (1,)
    mu = a[:, None, None] * means  # (n, K, d)
    C = a[:, None, None, None] ** 2 * covs + s2[:, None, None, None] * torch.eye(d, dtype=x.dtype, device=x.device)
    L = torch.linalg.cholesky(C)  # (n, K, d, d)
    diff = x[:, None, :] - mu  # (n, K, d)
    if L.shape[0] == 1:  # shared time: apply the K inverses directly (a batched solve would expand L to n K)
        sol = torch.einsum("kij,nkj->nki", torch.cholesky_inverse(L[0]), diff)
    else:
        sol = torch.cholesky_solve(diff[..., None], L)[..., 0]  # C^{-1} (x - mu), (n, K, d)
    logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)  # (n, K)
    logN = -0.5 * ((diff * sol).sum(-1) + logdet + d * math.log(2 * math.pi))
    return logN + torch.log(weights), sol


def gmm_score(
    x: torch.Tensor,
    t: float | torch.Tensor,
    sde: Schedule,
    weights: torch.Tensor,
    means: torch.Tensor,
    covs: torch.Tensor,
) -> torch.Tensor:
    """Exact ``grad_x log p_t(x)`` when ``p_0 = sum_k w_k N(m_k, C_k)``: each component is carried to
    ``N(alpha m_k, alpha^2 C_k + sigma^2 I)``, so the score is the responsibility-weighted mean of
    ``-C_k(t)^{-1} (x - alpha m_k)``. ``x`` is ``(n, d)``; returns ``(n, d)``."""
    logwN, sol = _gmm_marginal(x, t, sde, weights, means, covs)
    r = torch.softmax(logwN, dim=1)  # responsibilities (n, K)
    return -(r[..., None] * sol).sum(1)


def gmm_logp(
    x: torch.Tensor,
    t: float | torch.Tensor,
    sde: Schedule,
    weights: torch.Tensor,
    means: torch.Tensor,
    covs: torch.Tensor,
) -> torch.Tensor:
    """Exact ``log p_t(x)`` of the diffused mixture (see :func:`gmm_score`); returns ``(n,)``."""
    logwN, _ = _gmm_marginal(x, t, sde, weights, means, covs)
    return torch.logsumexp(logwN, dim=1)


def gmm_x0_eps(
    x: torch.Tensor,
    t: float | torch.Tensor,
    schedule: Schedule,
    weights: torch.Tensor,
    means: torch.Tensor,
    covs: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``(E[x_0 | x_t], E[eps | x_t])`` of the diffused mixture, both ``(n, d)``, computed without dividing
    by ``alpha`` or ``sigma`` (so valid at ``t = 1`` of rectified flow and near ``t = 0``)."""
    logwN, sol = _gmm_marginal(x, t, schedule, weights, means, covs)  # sol: C_k(t)^{-1} (x - alpha m_k)
    r = torch.softmax(logwN, dim=1)[..., None]  # (n, K, 1)
    t = as_time(t, x)
    a, s = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]  # (n, 1)
    covs, means = covs.to(x), means.to(x)
    x0_k = means + a[:, None] * torch.einsum("kij,nkj->nki", covs, sol)  # (n, K, d)
    return (r * x0_k).sum(1), s * (r * sol).sum(1)


def gmm_denoiser(
    schedule: Schedule, weights: torch.Tensor, means: torch.Tensor, covs: torch.Tensor, prediction: str = "x0"
) -> Denoiser:
    """The Bayes-optimal denoiser of the mixture as a :class:`~lib.diffusion.predictions.Denoiser` that
    outputs ``prediction`` (what a perfectly trained network with that output would return)."""
    check_prediction("prediction", prediction)

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(shape[0], -1)
        x0, eps = gmm_x0_eps(x2, t, schedule, weights, means, covs)
        return from_x0_eps(x0, eps, x2, t, schedule, prediction).reshape(shape)

    return Denoiser(model, prediction)


def score_matching_objectives_1d(
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0_points: torch.Tensor,
    x0_weights: torch.Tensor,
    sde: Schedule,
    t: float,
    grid: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit and denoising score-matching objectives at one time ``t``, by quadrature on ``grid``.

    Data: ``p_0 = sum_i w_i delta(x - x_i)`` in 1D, so ``p_t`` is a Gaussian mixture with a known score.
    Returns ``(dsm, esm)`` with ``dsm = E_{x0, x_t} (s(x_t) - grad log p(x_t|x0))^2`` and
    ``esm = E_{x_t} (s(x_t) - grad log p_t(x_t))^2``; Vincent's identity says ``dsm - esm`` does not depend
    on ``score_fn``.
    """
    if grid.dim() != 1 or x0_points.dim() != 1 or x0_weights.shape != x0_points.shape:
        raise ValueError("grid, x0_points and x0_weights must be 1-D (the last two of equal length)")
    x = grid[:, None]  # (G, 1)
    tt = torch.full((1,), float(t), dtype=grid.dtype)
    a, s = sde.alpha(tt), sde.sigma(tt)
    diff = x - a * x0_points  # (G, N)
    p_joint = x0_weights * torch.exp(-0.5 * (diff / s) ** 2) / (s * math.sqrt(2 * math.pi))  # (G, N)
    cond_score = -diff / s**2
    p_t = p_joint.sum(1)
    marg_score = (p_joint * cond_score).sum(1) / p_t
    s_theta = score_fn(x, torch.full((grid.shape[0],), float(t), dtype=grid.dtype))[:, 0]  # (G,)
    dsm = torch.trapezoid((p_joint * (s_theta[:, None] - cond_score) ** 2).sum(1), grid)
    esm = torch.trapezoid(p_t * (s_theta - marg_score) ** 2, grid)
    return dsm, esm
