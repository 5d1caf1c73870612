"""Scores: the exact score of a Gaussian mixture under a diffusion, denoising score matching, and the four
network parameterisations (eps, x0, score, v) with converters between them.

Chapter: "Diffusion as stochastic differential equations" (``chapters/diffusion_sde.ipynb``).

References: Vincent, "A Connection Between Score Matching and Denoising Autoencoders", 2011 (the DSM
identity); Hyvarinen, "Estimation of non-normalized statistical models by score matching", 2005; Song et al.,
ICLR 2021 (weighting lambda(t), likelihood weighting g^2); Salimans and Ho, "Progressive Distillation", 2022
(the v-parameterisation).

Glossary (``x_t = alpha x_0 + sigma eps``, ``alpha, sigma`` from the SDE at time ``t``)
--------
eps     the noise; ``score = -eps / sigma``
x0      the clean data (Tweedie: ``E[x_0 | x_t] = (x_t + sigma^2 score) / alpha``)
score   ``grad_x log p_t(x_t)``
v       ``alpha eps - sigma x0``
lambda  DSM weighting, ``L = E_t lambda(t) E ||s_theta(x_t, t) - grad log p(x_t | x_0)||^2``
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lib.data.toy2d import check_mixture
from lib.diffusion.sde import LinearSDE, as_time, bcast

PARAMETERISATIONS = ("eps", "x0", "score", "v")


def _check_param(name: str, value: str) -> None:
    if value not in PARAMETERISATIONS:
        raise ValueError(f"{name} must be one of {PARAMETERISATIONS}, got {value!r}")


def to_eps(out: torch.Tensor, x_t: torch.Tensor, t: float | torch.Tensor, sde: LinearSDE, param: str) -> torch.Tensor:
    """Express a network output in parameterisation ``param`` as the noise prediction ``eps``."""
    _check_param("param", param)
    t = as_time(t, x_t)
    a, s = bcast(sde.alpha(t), x_t), bcast(sde.sigma(t), x_t)
    if param == "eps":
        return out
    if param == "x0":
        return (x_t - a * out) / s
    if param == "score":
        return -s * out
    return (s * x_t + a * out) / (a**2 + s**2)  # v = a eps - s x0, x_t = a x0 + s eps


def from_eps(eps: torch.Tensor, x_t: torch.Tensor, t: float | torch.Tensor, sde: LinearSDE, param: str) -> torch.Tensor:
    """Express a noise prediction ``eps`` in parameterisation ``param``."""
    _check_param("param", param)
    t = as_time(t, x_t)
    a, s = bcast(sde.alpha(t), x_t), bcast(sde.sigma(t), x_t)
    if param == "eps":
        return eps
    if param == "x0":
        return (x_t - s * eps) / a
    if param == "score":
        return -eps / s
    x0 = (x_t - s * eps) / a
    return a * eps - s * x0


def convert(
    out: torch.Tensor, x_t: torch.Tensor, t: float | torch.Tensor, sde: LinearSDE, src: str, dst: str
) -> torch.Tensor:
    """Convert ``out`` from parameterisation ``src`` to ``dst`` (each in ``"eps", "x0", "score", "v"``)."""
    _check_param("src", src)
    _check_param("dst", dst)
    return out if src == dst else from_eps(to_eps(out, x_t, t, sde, src), x_t, t, sde, dst)


def score_fn_from_model(
    model: Callable[..., torch.Tensor], sde: LinearSDE, parameterisation: str = "eps", **cond: Any
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``score_fn(x, t)`` from a network ``model(x, t, **cond)`` trained in ``parameterisation``.

    Conditioning (class labels ``y``, a cross-attention ``context``) is fixed in the closure; the guidance
    chapter combines several such functions.
    """
    _check_param("parameterisation", parameterisation)

    def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return convert(model(x, t, **cond), x, t, sde, parameterisation, "score")

    return score_fn


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
    sol = torch.cholesky_solve(diff[..., None], L)[..., 0]  # C^{-1} (x - mu), (n, K, d)
    logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)  # (n, K)
    logN = -0.5 * ((diff * sol).sum(-1) + logdet + d * math.log(2 * math.pi))
    return logN + torch.log(weights), sol


def gmm_score(
    x: torch.Tensor,
    t: float | torch.Tensor,
    sde: LinearSDE,
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
    sde: LinearSDE,
    weights: torch.Tensor,
    means: torch.Tensor,
    covs: torch.Tensor,
) -> torch.Tensor:
    """Exact ``log p_t(x)`` of the diffused mixture (see :func:`gmm_score`); returns ``(n,)``."""
    logwN, _ = _gmm_marginal(x, t, sde, weights, means, covs)
    return torch.logsumexp(logwN, dim=1)


# --- denoising score matching ---------------------------------------------------------------------------


def dsm_weight(
    t: torch.Tensor, sde: LinearSDE, weighting: str | Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``lambda(t) / sigma(t)^2``: the factor in front of ``||eps_theta - eps||^2`` in the DSM loss.

    ``"eps"`` (lambda = sigma^2, DDPM's simple loss), ``"score"`` (lambda = 1), ``"likelihood"``
    (lambda = g^2, which makes the loss an upper bound on the negative log-likelihood) or a callable
    ``lambda(t)``.
    """
    s2 = sde.sigma(t) ** 2
    if callable(weighting):
        return weighting(t) / s2
    if weighting == "eps":
        return torch.ones_like(t)
    if weighting == "score":
        return 1.0 / s2
    if weighting == "likelihood":
        return sde.g(t) ** 2 / s2
    raise ValueError(f"weighting must be 'eps', 'score', 'likelihood' or a callable, got {weighting!r}")


@dataclass(frozen=True)
class DSMLoss:
    """Denoising score-matching loss, usable directly as ``lib.train.train``'s ``loss_fn(model, batch)``.

    ``batch`` is ``x0``, ``(x0, y)`` or a dict ``{"x": x0, **cond}``; the network is called as
    ``model(x_t, t, **cond)`` and its output is read in ``parameterisation``. Per example the loss is
    ``lambda(t) / sigma(t)^2 * mean_dims (eps_theta - eps)^2`` with ``t ~ U(t_eps, 1)``.
    """

    sde: LinearSDE
    """The forward SDE."""
    parameterisation: str = "eps"
    """What the network outputs: ``"eps"``, ``"x0"``, ``"score"`` or ``"v"``."""
    weighting: str | Callable[[torch.Tensor], torch.Tensor] = "eps"
    """See :func:`dsm_weight`."""
    t_eps: float = 1e-3
    """Smallest training time (the score blows up as ``t -> 0``)."""
    use_labels: bool = False
    """Pass ``y`` of an ``(x0, y)`` batch to the model (class-conditional training)."""
    p_uncond: float = 0.0
    """Probability of replacing ``y`` by ``null_label`` (classifier-free guidance training)."""
    null_label: int | None = None
    """The "no label" class index (needed when ``p_uncond > 0``)."""

    def __post_init__(self) -> None:
        _check_param("parameterisation", self.parameterisation)
        if not 0 < self.t_eps < 1:
            raise ValueError(f"t_eps must be in (0, 1), got {self.t_eps!r}")
        if not 0 <= self.p_uncond <= 1:
            raise ValueError(f"p_uncond must be in [0, 1], got {self.p_uncond!r}")
        if self.p_uncond > 0 and self.null_label is None:
            raise ValueError("p_uncond > 0 needs a null_label")

    def __call__(self, model: Callable[..., torch.Tensor], batch: Any) -> torch.Tensor:
        cond: dict[str, Any] = {}
        if isinstance(batch, dict):
            cond = {k: v for k, v in batch.items() if k != "x"}
            x0 = batch["x"]
        elif isinstance(batch, (tuple, list)):
            x0 = batch[0]
            if self.use_labels:
                y = batch[1]
                if self.p_uncond > 0:
                    drop = torch.rand(y.shape, device=y.device) < self.p_uncond
                    y = torch.where(drop, torch.full_like(y, self.null_label), y)
                cond = {"y": y}
        else:
            x0 = batch
        if not torch.is_tensor(x0) or x0.dim() < 2:
            raise ValueError("batch must hold x0 with shape (batch, ...)")
        t = self.t_eps + (1 - self.t_eps) * torch.rand(x0.shape[0], device=x0.device, dtype=x0.dtype)
        x_t, eps = self.sde.perturb(x0, t)
        eps_hat = to_eps(model(x_t, t, **cond), x_t, t, self.sde, self.parameterisation)
        per_example = (eps_hat - eps).pow(2).reshape(x0.shape[0], -1).mean(1)
        return (dsm_weight(t, self.sde, self.weighting) * per_example).mean()


def score_matching_objectives_1d(
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0_points: torch.Tensor,
    x0_weights: torch.Tensor,
    sde: LinearSDE,
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
