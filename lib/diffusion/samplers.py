"""Samplers for any schedule given a denoiser (any prediction): Euler and Heun on the probability-flow ODE, an
adaptive ODE solver, DDIM (eta) and ancestral DDPM, Euler-Maruyama on the reverse SDE, predictor-corrector.

Chapter: "Diffusion as stochastic differential equations" (``chapters/diffusion_sde.ipynb``).

All of them walk a decreasing time grid ``ts`` (:func:`lib.diffusion.timesteps.time_grid`) from ``t_max`` to
``t_min`` and read the network as ``(x0_hat, eps_hat)``. In those variables, with ``f = alpha'/alpha``:

    PF-ODE velocity      u = alpha' x0_hat + sigma' eps_hat
    reverse-SDE drift    u + (sigma' - sigma f) eps_hat  (= f x - g^2 score; ``g^2 / (2 sigma) = sigma' - sigma f``)

so only the SDE samplers need ``alpha > 0`` (finite ``f``, ``g``), and only ``eps``/``score`` models need
``alpha > 0`` to recover ``x0``: for rectified flow or cosine with those, start at ``t_max < 1``.

References: Song et al., ICLR 2021 (reverse SDE, PF-ODE, predictor-corrector, algorithms 2-5 and their code);
Ho et al. 2020 (ancestral sampling, algorithm 2); Song, Meng and Ermon, "DDIM", ICLR 2021 (eq. 12);
Karras et al. 2022 (Heun, algorithm 1); Dormand and Prince 1980 (``dopri5``, via torchdiffeq).

Glossary
--------
denoiser     :class:`~lib.diffusion.predictions.Denoiser`: a model, its prediction and fixed conditioning
x_T          the starting noise, e.g. ``schedule.prior_sample(shape)``
ts           the time grid; ``steps = len(ts) - 1``
NFE          number of network evaluations (per batch): the cost of a sample
snr          predictor-corrector's target signal-to-noise ratio ``r``: Langevin step
             ``eps = 2 (r ||z|| / ||score||)^2`` with batch-mean norms
eta          DDIM's stochasticity: 0 deterministic, 1 DDPM's posterior variance (ancestral)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lib.diffusion.predictions import Denoiser
from lib.diffusion.schedules import Schedule, bcast
from lib.diffusion.timesteps import time_grid


@dataclass(frozen=True)
class SampleResult:
    """What every sampler returns."""

    x: torch.Tensor
    """Samples at ``t_min`` (the last step adds no noise), shape of ``x_T``."""
    nfe: int
    """Number of denoiser evaluations (per batch, not per example)."""


class _Counted:
    """Reads a denoiser as ``(x0_hat, eps_hat)`` at a ``(batch,)`` time and counts the evaluations."""

    def __init__(self, denoiser: Denoiser, schedule: Schedule) -> None:
        self.denoiser, self.schedule, self.n = denoiser, schedule, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.n += 1
        return self.denoiser.x0_eps(x, t.to(x.dtype).expand(x.shape[0]), self.schedule)


def _setup(
    denoiser: Denoiser,
    schedule: Schedule,
    x_T: torch.Tensor,
    steps: int | None,
    ts: torch.Tensor | None,
    grid: str,
    t_max: float,
    t_min: float,
    needs_sde: bool = False,
) -> tuple[_Counted, torch.Tensor]:
    """Validate the arguments shared by every sampler; returns the counted denoiser and the time grid."""
    if not isinstance(denoiser, Denoiser):
        raise TypeError(f"denoiser must be a lib.diffusion.predictions.Denoiser, got {type(denoiser).__name__}")
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule (VPSDE, RectifiedFlow, ...), got {type(schedule).__name__}")
    if not torch.is_tensor(x_T) or x_T.dim() < 2 or not x_T.is_floating_point():
        raise ValueError("x_T must be a float tensor of shape (batch, ...)")
    if ts is None:
        if steps is None:
            raise ValueError("give steps or ts")
        ts = time_grid(steps, grid, schedule, t_max=t_max, t_min=t_min, dtype=x_T.dtype, device=x_T.device)
    elif not torch.is_tensor(ts) or ts.dim() != 1 or len(ts) < 2 or not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError("ts must be a 1-D tensor of at least 2 strictly decreasing times")
    ts = ts.to(dtype=x_T.dtype, device=x_T.device)
    a_max = float(schedule.alpha(ts[:1].double()))
    if a_max <= 0 and (needs_sde or denoiser.prediction in ("eps", "score")):
        what = "the reverse SDE's f and g" if needs_sde else f"x0 from a {denoiser.prediction!r} prediction"
        raise ValueError(f"alpha(t_max) = 0, so {what} is not finite: start at t_max < 1 (ts[0] = {float(ts[0])})")
    return _Counted(denoiser, schedule), ts


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def _coefs(schedule: Schedule, t: torch.Tensor, x: torch.Tensor):
    t = t.expand(x.shape[0])
    return [bcast(c(t), x) for c in (schedule.alpha, schedule.sigma, schedule.d_alpha, schedule.d_sigma)]


def pf_velocity(schedule: Schedule, t: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``dx/dt = alpha' x0_hat + sigma' eps_hat`` at a scalar or ``(batch,)`` time ``t``."""
    _, _, da, ds = _coefs(schedule, t, x0)
    return da * x0 + ds * eps


def reverse_sde_drift(schedule: Schedule, t, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``f x - g^2 score = u + (sigma' - sigma f) eps_hat`` at time ``t`` (needs ``alpha(t) > 0``)."""
    a, s, da, ds = _coefs(schedule, t, x0)
    return da * x0 + ds * eps + (ds - s * da / a) * eps


@torch.no_grad()
def euler(denoiser, schedule, x_T, steps=None, *, ts=None, grid="uniform", t_max=1.0, t_min=1e-3) -> SampleResult:
    """Euler on the PF-ODE: ``x <- x + (t_next - t) u(x, t)``; one NFE per step."""
    f, ts = _setup(denoiser, schedule, x_T, steps, ts, grid, t_max, t_min)
    x = x_T
    for i in range(len(ts) - 1):
        x = x + (ts[i + 1] - ts[i]) * pf_velocity(schedule, ts[i], *f(x, ts[i]))
    return SampleResult(x, f.n)


@torch.no_grad()
def heun(denoiser, schedule, x_T, steps=None, *, ts=None, grid="uniform", t_max=1.0, t_min=1e-3) -> SampleResult:
    """Heun (explicit trapezoid) on the PF-ODE, second order, two NFE per step (Karras et al. 2022, alg. 1)."""
    f, ts = _setup(denoiser, schedule, x_T, steps, ts, grid, t_max, t_min)
    x = x_T
    for i in range(len(ts) - 1):
        dt = ts[i + 1] - ts[i]
        d1 = pf_velocity(schedule, ts[i], *f(x, ts[i]))
        d2 = pf_velocity(schedule, ts[i + 1], *f(x + dt * d1, ts[i + 1]))
        x = x + 0.5 * dt * (d1 + d2)
    return SampleResult(x, f.n)


@torch.no_grad()
def probability_flow_ode(
    denoiser, schedule, x_T, *, method="dopri5", rtol=1e-5, atol=1e-5, t_max=1.0, t_min=1e-3
) -> SampleResult:
    """The PF-ODE from ``t_max`` to ``t_min`` with an adaptive ``torchdiffeq`` solver (``"dopri5"``,
    ``"bosh3"``, ...); ``rtol``/``atol`` set its accuracy and its NFE."""
    from torchdiffeq import odeint

    f, ts = _setup(denoiser, schedule, x_T, 1, None, "uniform", t_max, t_min)

    def v(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = t.clamp(t_min, t_max)  # adaptive stages may overshoot the end time
        return pf_velocity(schedule, t, *f(x, t))

    return SampleResult(odeint(v, x_T, ts, rtol=rtol, atol=atol, method=method)[-1], f.n)


@torch.no_grad()
def ddim(
    denoiser, schedule, x_T, steps=None, *, eta=0.0, ts=None, grid="uniform", t_max=1.0, t_min=1e-3,
    x0_clip=None, generator=None,
) -> SampleResult:  # fmt: skip
    """DDIM: ``x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z`` with ``c = eta`` times the std of
    ``q(x_s | x_t, x_0)``. ``eta = 0`` is deterministic (first order in ``sigma / alpha``), ``eta = 1`` is
    ancestral sampling. ``x0_clip`` clamps ``x0_hat`` (and re-derives ``eps_hat``). The last step adds no noise."""
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0, got {eta!r}")
    f, ts = _setup(denoiser, schedule, x_T, steps, ts, grid, t_max, t_min)
    x = x_T
    for i in range(len(ts) - 1):
        t, s = ts[i], ts[i + 1]
        a_t, s_t, _, _ = _coefs(schedule, t, x)
        a_s, s_s, _, _ = _coefs(schedule, s, x)
        x0, eps = f(x, t)
        if x0_clip is not None:
            x0 = x0.clamp(-x0_clip, x0_clip)
            eps = (x - a_t * x0) / s_t
        var_ts = (s_t**2 - (a_t / a_s) ** 2 * s_s**2).clamp_min(0.0)  # Var(x_t | x_s)
        c = eta * (var_ts * s_s**2 / s_t**2).sqrt() if i < len(ts) - 2 else torch.zeros_like(s_s)
        x = a_s * x0 + (s_s**2 - c**2).clamp_min(0.0).sqrt() * eps
        if eta > 0 and i < len(ts) - 2:
            x = x + c * _noise(x, generator)
    return SampleResult(x, f.n)


def ddpm_ancestral(
    denoiser, schedule, x_T, steps=None, *, ts=None, grid="uniform", t_max=1.0, t_min=1e-3, x0_clip=None,
    generator=None,
) -> SampleResult:  # fmt: skip
    """Ancestral sampling: ``x_s ~ q(x_s | x_t, x0_hat)``, the forward process's Gaussian posterior with ``x_0``
    replaced by the denoiser's estimate (Ho et al. 2020, algorithm 2, for any schedule) = DDIM with ``eta = 1``."""
    return ddim(denoiser, schedule, x_T, steps, eta=1.0, ts=ts, grid=grid, t_max=t_max, t_min=t_min,
                x0_clip=x0_clip, generator=generator)  # fmt: skip


@torch.no_grad()
def euler_maruyama(
    denoiser, schedule, x_T, steps=None, *, ts=None, grid="uniform", t_max=1.0, t_min=1e-3, generator=None
) -> SampleResult:
    """Reverse-time SDE by Euler-Maruyama: ``x <- x + (f x - g^2 score) dt + g sqrt(|dt|) z`` with ``dt < 0``.
    Stable while ``g^2 |dt| / sigma^2 = |d lambda|`` is small (use ``grid="logsnr"`` near ``alpha = 0``).
    The last step adds no noise."""
    f, ts = _setup(denoiser, schedule, x_T, steps, ts, grid, t_max, t_min, needs_sde=True)
    x = x_T
    for i in range(len(ts) - 1):
        t, dt = ts[i], ts[i + 1] - ts[i]
        x = x + dt * reverse_sde_drift(schedule, t, *f(x, t))
        if i < len(ts) - 2:
            x = x + schedule.g(t) * (-dt).sqrt() * _noise(x, generator)
    return SampleResult(x, f.n)


def langevin_step(
    score: torch.Tensor, x: torch.Tensor, snr: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One Langevin MCMC step targeting ``p_t`` given ``score = grad log p_t(x)``: ``x + eps s + sqrt(2 eps) z``
    with ``eps = 2 (snr ||z|| / ||s||)^2``, norms averaged over the batch (Song et al. 2021, algorithm 5 and
    their code; a per-example ratio explodes in low dimension, where ``||s||`` can be near zero)."""
    z = _noise(x, generator)
    s_norm = score.reshape(x.shape[0], -1).norm(dim=1).mean().clamp_min(1e-12)
    z_norm = z.reshape(x.shape[0], -1).norm(dim=1).mean()
    eps = 2 * (snr * z_norm / s_norm) ** 2
    return x + eps * score + (2 * eps).sqrt() * z


@torch.no_grad()
def predictor_corrector(
    denoiser, schedule, x_T, steps=None, *, snr=0.16, n_corrector=1, ts=None, grid="uniform", t_max=1.0,
    t_min=1e-3, generator=None,
) -> SampleResult:  # fmt: skip
    """Predictor-corrector, in the order of Song et al.'s code: at each grid time ``t_i``, first ``n_corrector``
    Langevin steps targeting ``p_{t_i}``, then one Euler-Maruyama predictor step to ``t_{i+1}``.
    ``NFE = steps * (1 + n_corrector)``."""
    if not snr > 0 or not isinstance(n_corrector, int) or n_corrector < 0:
        raise ValueError(f"need snr > 0 and an int n_corrector >= 0, got snr={snr!r}, n_corrector={n_corrector!r}")
    f, ts = _setup(denoiser, schedule, x_T, steps, ts, grid, t_max, t_min, needs_sde=True)
    x = x_T
    for i in range(len(ts) - 1):
        t, dt = ts[i], ts[i + 1] - ts[i]
        s_t = schedule.sigma(t)
        for _ in range(n_corrector):
            x = langevin_step(-f(x, t)[1] / s_t, x, snr, generator)  # score = -eps_hat / sigma
        x = x + dt * reverse_sde_drift(schedule, t, *f(x, t))
        if i < len(ts) - 2:
            x = x + schedule.g(t) * (-dt).sqrt() * _noise(x, generator)
    return SampleResult(x, f.n)


SAMPLERS: dict[str, Callable[..., SampleResult]] = {
    "euler": euler,
    "heun": heun,
    "ode": probability_flow_ode,
    "ddim": ddim,
    "ddpm": ddpm_ancestral,
    "em": euler_maruyama,
    "pc": predictor_corrector,
}
"""Name -> sampler, for loops over samplers. Stochastic ones (``ddpm``, ``em``, ``pc``, ``ddim`` with
``eta > 0``) take ``generator``; ``ode`` takes no grid."""

STOCHASTIC = ("ddpm", "em", "pc")
