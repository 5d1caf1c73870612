"""Samplers for any linear diffusion SDE given a score function: reverse-SDE Euler-Maruyama,
predictor-corrector, probability-flow ODE (adaptive or fixed-step Euler/Heun), DDPM ancestral and DDIM.

Chapter: "Diffusion as stochastic differential equations" (``chapters/diffusion_sde.ipynb``).

References: Song et al., ICLR 2021 (reverse SDE, predictor-corrector with the signal-to-noise step size,
algorithms 4-5; PF-ODE with RK45); Ho et al. 2020 (ancestral sampling, algorithm 2); Song, Meng and Ermon,
"Denoising Diffusion Implicit Models", ICLR 2021 (eq. 12); Karras et al. 2022 (Heun's method).

Glossary
--------
score_fn(x, t)  ``grad_x log p_t(x)`` for ``x (batch, ...)`` and ``t (batch,)``; conditioning lives in its closure
x_T             the starting noise, e.g. ``sde.prior_sample(shape)``
steps           number of time steps on the uniform grid ``1 = t_0 > t_1 > ... > t_steps = t_eps``
NFE             number of function (score network) evaluations: the cost of a sample
snr             predictor-corrector's target signal-to-noise ratio ``r``, Langevin step
                ``eps = 2 (r ||z|| / ||score||)^2``, batch-mean norms
eta             DDIM's stochasticity: 0 = deterministic DDIM, 1 = DDPM's posterior variance
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lib.diffusion.sde import LinearSDE, ScoreFn, bcast


@dataclass(frozen=True)
class SampleResult:
    """What every sampler returns."""

    x: torch.Tensor
    """Samples at ``t = t_eps`` (noise-free last step), shape of ``x_T``."""
    nfe: int
    """Number of score evaluations (per batch, not per example)."""


class _Counted:
    """Wraps a score function and counts its calls."""

    def __init__(self, fn: ScoreFn) -> None:
        if not callable(fn):
            raise TypeError(f"score_fn must be callable, got {type(fn).__name__}")
        self.fn, self.n = fn, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.n += 1
        return self.fn(x, t)


def time_grid(steps: int, t_eps: float = 1e-3, device=None, dtype=torch.float32) -> torch.Tensor:
    """``steps + 1`` uniformly spaced times from 1 down to ``t_eps``."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not 0 < t_eps < 1:
        raise ValueError(f"t_eps must be in (0, 1), got {t_eps!r}")
    return torch.linspace(1.0, t_eps, steps + 1, device=device, dtype=dtype)


def _check(x_T: torch.Tensor, sde: LinearSDE) -> None:
    if not torch.is_tensor(x_T) or x_T.dim() < 2:
        raise ValueError("x_T must be a tensor of shape (batch, ...)")
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"sde must be a LinearSDE (VPSDE, VESDE, SubVPSDE), got {type(sde).__name__}")


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


@torch.no_grad()
def euler_maruyama(
    score_fn: ScoreFn,
    sde: LinearSDE,
    x_T: torch.Tensor,
    steps: int = 500,
    t_eps: float = 1e-3,
    generator: torch.Generator | None = None,
) -> SampleResult:
    """Reverse-time SDE by Euler-Maruyama: ``x <- x + (f - g^2 s) dt + g sqrt(|dt|) z`` with ``dt < 0``.
    The last step adds no noise."""
    _check(x_T, sde)
    score, ts, x = _Counted(score_fn), time_grid(steps, t_eps, x_T.device, x_T.dtype), x_T
    for i in range(steps):
        t, dt = ts[i].expand(x.shape[0]), ts[i + 1] - ts[i]
        drift, g = sde.reverse_drift_diffusion(x, t, score)
        x = x + drift * dt
        if i < steps - 1:
            x = x + bcast(g, x) * (-dt).sqrt() * _noise(x, generator)
    return SampleResult(x, score.n)


def langevin_step(
    score_fn: ScoreFn, x: torch.Tensor, t: torch.Tensor, snr: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One Langevin MCMC step targeting ``p_t``: ``x + eps s + sqrt(2 eps) z`` with the step
    ``eps = 2 (snr ||z|| / ||s||)^2``, norms averaged over the batch (Song et al. 2021, algorithm 5 and their
    code; a per-example ratio explodes in low dimension where ``||s||`` can be near zero)."""
    s, z = score_fn(x, t), _noise(x, generator)
    s_norm = s.reshape(x.shape[0], -1).norm(dim=1).mean().clamp_min(1e-12)
    z_norm = z.reshape(x.shape[0], -1).norm(dim=1).mean()
    eps = 2 * (snr * z_norm / s_norm) ** 2
    return x + eps * s + (2 * eps).sqrt() * z


@torch.no_grad()
def predictor_corrector(
    score_fn: ScoreFn,
    sde: LinearSDE,
    x_T: torch.Tensor,
    steps: int = 500,
    snr: float = 0.16,
    n_corrector: int = 1,
    t_eps: float = 1e-3,
    generator: torch.Generator | None = None,
) -> SampleResult:
    """Predictor-corrector: at each time, ``n_corrector`` Langevin steps at that time, then one reverse-SDE
    Euler-Maruyama predictor step. ``NFE = steps * (1 + n_corrector)``."""
    _check(x_T, sde)
    if not snr > 0 or not isinstance(n_corrector, int) or n_corrector < 0:
        raise ValueError(f"need snr > 0 and an int n_corrector >= 0, got snr={snr!r}, n_corrector={n_corrector!r}")
    score, ts, x = _Counted(score_fn), time_grid(steps, t_eps, x_T.device, x_T.dtype), x_T
    for i in range(steps):
        t, dt = ts[i].expand(x.shape[0]), ts[i + 1] - ts[i]
        for _ in range(n_corrector):
            x = langevin_step(score, x, t, snr, generator)
        drift, g = sde.reverse_drift_diffusion(x, t, score)
        x = x + drift * dt
        if i < steps - 1:
            x = x + bcast(g, x) * (-dt).sqrt() * _noise(x, generator)
    return SampleResult(x, score.n)


@torch.no_grad()
def probability_flow_ode(
    score_fn: ScoreFn,
    sde: LinearSDE,
    x_T: torch.Tensor,
    method: str = "dopri5",
    steps: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_eps: float = 1e-3,
) -> SampleResult:
    """Integrate the probability-flow ODE ``dx/dt = f - g^2 s / 2`` from ``t = 1`` to ``t_eps``.

    ``method``: ``"euler"`` or ``"heun"`` (fixed ``steps``; Heun costs 2 NFE per step) or any adaptive
    ``torchdiffeq`` method (``"dopri5"``, ``"bosh3"``, ...; ``rtol``/``atol`` set its accuracy and cost).
    """
    _check(x_T, sde)
    score = _Counted(score_fn)

    def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # adaptive solvers may evaluate a stage just past the end time (then interpolate back): keep t >= t_eps
        return sde.probability_flow_drift(x, t.clamp(t_eps, 1.0).expand(x.shape[0]), score)

    if method in ("euler", "heun"):
        if steps is None:
            raise ValueError(f"method={method!r} needs steps")
        ts, x = time_grid(steps, t_eps, x_T.device, x_T.dtype), x_T
        for i in range(steps):
            t, dt = ts[i], ts[i + 1] - ts[i]
            d1 = v(x, t)
            if method == "euler":
                x = x + dt * d1
            else:
                x_e = x + dt * d1
                x = x + 0.5 * dt * (d1 + v(x_e, ts[i + 1]))
        return SampleResult(x, score.n)
    from torchdiffeq import odeint

    t_span = torch.tensor([1.0, t_eps], dtype=x_T.dtype, device=x_T.device)
    x = odeint(lambda t, x: v(x, t), x_T, t_span, rtol=rtol, atol=atol, method=method)[-1]
    return SampleResult(x, score.n)


def _tweedie(x, t, s_t, a_t, score, x0_clip):
    """``x0_hat = (x + sigma^2 score) / alpha`` and ``eps_hat = -sigma score`` (clipped x0 re-derives eps)."""
    eps = -bcast(s_t, x) * score(x, t)
    x0 = (x - bcast(s_t, x) * eps) / bcast(a_t, x)
    if x0_clip is not None:
        x0 = x0.clamp(-x0_clip, x0_clip)
        eps = (x - bcast(a_t, x) * x0) / bcast(s_t, x)
    return x0, eps


@torch.no_grad()
def ddpm_ancestral(
    score_fn: ScoreFn,
    sde: LinearSDE,
    x_T: torch.Tensor,
    steps: int = 1000,
    t_eps: float = 1e-3,
    x0_clip: float | None = None,
    generator: torch.Generator | None = None,
) -> SampleResult:
    """Ancestral sampling: draw ``x_s ~ q(x_s | x_t, x0_hat)``, the Gaussian posterior of the forward process
    between grid times ``s < t`` with ``x0`` replaced by its Tweedie estimate (Ho et al. 2020, algorithm 2,
    written for any linear SDE)."""
    return ddim(score_fn, sde, x_T, steps=steps, eta=1.0, t_eps=t_eps, x0_clip=x0_clip, generator=generator)


@torch.no_grad()
def ddim(
    score_fn: ScoreFn,
    sde: LinearSDE,
    x_T: torch.Tensor,
    steps: int = 50,
    eta: float = 0.0,
    t_eps: float = 1e-3,
    x0_clip: float | None = None,
    generator: torch.Generator | None = None,
) -> SampleResult:
    """DDIM: ``x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z`` with
    ``c = eta * sqrt(posterior variance)``; ``eta = 0`` is deterministic (a first-order solver of the
    PF-ODE in ``x / alpha``), ``eta = 1`` is DDPM's ancestral sampler. The last step returns the mean."""
    _check(x_T, sde)
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta!r}")
    score, ts, x = _Counted(score_fn), time_grid(steps, t_eps, x_T.device, x_T.dtype), x_T
    for i in range(steps):
        t, s = ts[i].expand(x.shape[0]), ts[i + 1].expand(x.shape[0])
        a_t, s_t, a_s, s_s = sde.alpha(t), sde.sigma(t), sde.alpha(s), sde.sigma(s)
        x0, eps = _tweedie(x, t, s_t, a_t, score, x0_clip)
        a_ts, v_ts = sde.transition(t, s)
        c = eta * (v_ts * s_s**2 / s_t**2).sqrt()  # eta * std of q(x_s | x_t, x_0)
        if i == steps - 1:
            c = torch.zeros_like(c)
        x = bcast(a_s, x) * x0 + bcast((s_s**2 - c**2).clamp_min(0).sqrt(), x) * eps
        if i < steps - 1 and eta > 0:
            x = x + bcast(c, x) * _noise(x, generator)
    return SampleResult(x, score.n)


SAMPLERS: dict[str, Callable[..., SampleResult]] = {
    "em": euler_maruyama,
    "pc": predictor_corrector,
    "ode": probability_flow_ode,
    "ddpm": ddpm_ancestral,
    "ddim": ddim,
}
"""Name -> sampler, for loops over samplers."""
