"""SD3's section 3: every diffusion formulation as a weighted eps-loss; the resolution shift; SD3's sampling grid.

Chapter: "Stable Diffusion 3" (``chapters/sd3.ipynb``). Book time: data at ``t = 0``, noise at ``t = 1``,
``x_t = alpha_t x_0 + sigma_t eps``; rectified flow is ``alpha = 1 - t, sigma = t`` with velocity ``eps - x_0``.

At fixed ``x_t`` every prediction is affine in the predicted noise, so a squared error in any target is a
multiple of the eps error: ``|T_theta - T|^2 = eps_scale(t)^2 |eps_theta - eps|^2`` (:func:`lib.diffusion.loss.
eps_scale`). A formulation (schedule, prediction, time sampler ``pi``, weighting ``w_T`` of the target error) is
therefore the eps-loss ``E_{t ~ pi} [omega(t) |eps_theta - eps|^2]`` with ``omega = w_T eps_scale^2``
(:meth:`Formulation.eps_weight`); in Kingma and Gao's log-SNR form ``1/2 int w(lambda) |eps_theta - eps|^2
d lambda`` (Esser et al.'s ``-1/2 E_t[w_t lambda'_t ...]``) it has ``w(lambda) = 2 p_lambda(lambda) omega`` with
``p_lambda = pi(t) / |lambda'(t)|`` (:meth:`Formulation.log_snr_weight`). Rectified flow: ``eps_scale = 1 / (1 - t)``,
so ``omega = 1 / (1 - t)^2`` and, for uniform ``t``, ``w = t / (1 - t)``, the paper's ``w_t^RF``.

References: Esser et al., "Scaling Rectified Flow Transformers for High-Resolution Image Synthesis", 2024
(sections 2 and 3: losses, formulations, time samplers; section 5.3.2: resolution shift); Kingma and Gao,
"Understanding Diffusion Objectives as the ELBO with Simple Data Augmentation", 2023; Karras et al. 2022 (EDM);
Nichol and Dhariwal 2021 (cosine); Rombach et al. 2022 (LDM's scaled-linear betas); Salimans and Ho 2022 (v).

Glossary
--------
omega(t)       weight on the eps error of a formulation (:meth:`Formulation.eps_weight`)
w(lambda)      the paper's log-SNR weighting ``w_t`` (:meth:`Formulation.log_snr_weight`)
lambda'(t)     ``d lambda / dt = 2 (alpha'/alpha - sigma'/sigma) < 0`` (:func:`d_log_snr`)
alpha (shift)  ``sqrt(m / n)``, ``m`` pixels (or tokens) instead of ``n``: ``t' = alpha t / (1 + (alpha - 1) t)``
sigma_data     EDM's data standard deviation, 0.5
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lib.diffusion.loss import DiffusionLoss, eps_scale
from lib.diffusion.predictions import check_prediction
from lib.diffusion.schedules import CosineSchedule, DiscreteSchedule, RectifiedFlow, Schedule
from lib.diffusion.timesteps import TimeSampler, shift_time, time_grid


def d_log_snr(schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    """``lambda'(t) = 2 (alpha'/alpha - sigma'/sigma)`` for ``lambda = log(alpha^2 / sigma^2)``."""
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule, got {type(schedule).__name__}")
    return 2 * (schedule.d_alpha(t) / schedule.alpha(t) - schedule.d_sigma(t) / schedule.sigma(t))


@dataclass(frozen=True)
class Formulation:
    """A training objective of SD3's Table 1: ``w_T(t) |T_theta - T|^2``, ``t ~ t_sampler``, ``T`` the prediction."""

    name: str
    """Label, as in the paper (``"rf/lognorm(0.00, 1.00)"``, ``"eps/linear"``, ...)."""
    schedule: Schedule
    """``alpha_t, sigma_t``."""
    prediction: str
    """What the network outputs (and the space of the regression)."""
    t_sampler: TimeSampler
    """Training-time distribution ``pi(t)``."""
    weighting: str | Callable[[torch.Tensor], torch.Tensor] = "none"
    """``w_T(t)`` on the prediction-space error: ``"none"`` (1) or a callable."""

    def __post_init__(self) -> None:
        check_prediction("prediction", self.prediction)
        if not isinstance(self.t_sampler, TimeSampler):
            raise TypeError(f"t_sampler must be a TimeSampler, got {type(self.t_sampler).__name__}")

    def loss(self, generator: torch.Generator | None = None, p_uncond: float | dict = 0.0) -> DiffusionLoss:
        """The core's :class:`~lib.diffusion.loss.DiffusionLoss` for this formulation."""
        return DiffusionLoss(self.schedule, self.prediction, weighting=self.weighting, t_sampler=self.t_sampler,
                             p_uncond=p_uncond, generator=generator)  # fmt: skip

    def target_weight(self, t: torch.Tensor) -> torch.Tensor:
        """``w_T(t)``."""
        return self.weighting(t) if callable(self.weighting) else torch.ones_like(t)

    def eps_weight(self, t: torch.Tensor) -> torch.Tensor:
        """``omega(t) = w_T(t) eps_scale(t)^2``: this loss is ``E_{t ~ pi}[omega(t) |eps_theta - eps|^2]``."""
        return self.target_weight(t) * eps_scale(t, self.schedule, self.prediction) ** 2

    def log_snr_weight(self, t: torch.Tensor) -> torch.Tensor:
        """The paper's ``w_t`` (Kingma and Gao's ``w(lambda)``): ``2 pi(t) omega(t) / |lambda'(t)|``."""
        return 2 * self.t_sampler.density(t) * self.eps_weight(t) / d_log_snr(self.schedule, t).abs()


def edm_weight(sigma_data: float = 0.5) -> Callable[[torch.Tensor], torch.Tensor]:
    """EDM's ``lambda(s) = (s^2 + sigma_data^2) / (s sigma_data)^2`` on the x0 error, ``s = sigma_t / alpha_t`` read on
    rectified flow (EDM's ``x = x0 + s eps`` is rectified flow's ``x_t / alpha_t``)."""

    def w(t: torch.Tensor) -> torch.Tensor:
        s = t / (1 - t)
        return (s**2 + sigma_data**2) / (s * sigma_data) ** 2

    return w


def formulation(kind: str, m: float | None = None, s: float | None = None, t_min: float = 1e-3) -> Formulation:
    """The formulations of SD3's Table 1 by name.

    ``"rf/uniform"``, ``"rf/lognorm"`` (``m, s``; default 0, 1), ``"rf/mode"`` (``s``; default 1.29), ``"rf/cosmap"``:
    rectified flow, velocity target. ``"eps/linear"``, ``"v/linear"``: LDM's scaled-linear table
    (:class:`DiscreteSchedule`), uniform ``t``. ``"eps/cosine"``, ``"v/cosine"``: ``alpha = cos(pi t / 2)``,
    ``sigma = sin(pi t / 2)``, uniform ``t`` below ``1 - t_min`` (at ``t = 1`` neither eps nor v determines x0).
    ``"edm"``: EDM's objective (``ln(sigma/alpha) ~ N(m, s)``, default ``-1.2, 1.2``; its x0 weighting, not its
    network preconditioning) on the rectified-flow path.
    """
    rf, uniform = RectifiedFlow(), TimeSampler("uniform", t_min=t_min, t_max=1.0)
    if kind == "rf/uniform":
        return Formulation(kind, rf, "velocity", uniform)
    if kind == "rf/lognorm":
        m, s = (0.0 if m is None else m), (1.0 if s is None else s)
        return Formulation(f"rf/lognorm({m:.2f}, {s:.2f})", rf, "velocity", TimeSampler("logit_normal", m, s, t_min))
    if kind == "rf/mode":
        s = 1.29 if s is None else s
        return Formulation(f"rf/mode({s:.2f})", rf, "velocity", TimeSampler("mode", s=s, t_min=t_min))
    if kind == "rf/cosmap":
        return Formulation(kind, rf, "velocity", TimeSampler("cosmap", t_min=t_min))
    if kind in ("eps/linear", "v/linear"):
        return Formulation(kind, DiscreteSchedule(), kind.split("/")[0], uniform)
    if kind in ("eps/cosine", "v/cosine"):
        below_one = TimeSampler("uniform", t_min=t_min, t_max=1 - t_min)
        return Formulation(kind, CosineSchedule(s=0.0), kind.split("/")[0], below_one)
    if kind == "edm":
        m, s = (-1.2 if m is None else m), (1.2 if s is None else s)
        sampler = TimeSampler("edm", m=m, s=s, t_min=t_min, t_max=1 - t_min, schedule=rf)
        return Formulation(f"edm({m:.2f}, {s:.2f})", rf, "x0", sampler, edm_weight())
    raise ValueError(f"kind must be one of {FORMULATIONS}, got {kind!r}")


FORMULATIONS = ("rf/uniform", "rf/lognorm", "rf/mode", "rf/cosmap", "eps/linear", "v/linear", "eps/cosine",
                "v/cosine", "edm")  # fmt: skip
"""Names accepted by :func:`formulation`."""


def resolution_shift(m: float, n: float) -> float:
    """SD3's shift ``alpha = sqrt(m / n)`` from ``n`` to ``m`` pixels: a constant image's mean seen through noise
    ``sigma_t`` per pixel has log-SNR ``lambda(t) + log n``; ``t' = alpha t / (1 + (alpha - 1) t)`` makes
    ``lambda(t') + log m = lambda(t) + log n`` on rectified flow."""
    if not m > 0 or not n > 0:
        raise ValueError(f"m and n must be positive, got {m!r}, {n!r}")
    return math.sqrt(m / n)


def flow_match_grid(
    steps: int, shift: float = 3.0, num_train_timesteps: int = 1000, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """SD3's sampling grid (diffusers' ``FlowMatchEulerDiscreteScheduler(shift=...).set_timesteps(steps)`` sigmas):
    ``steps + 1`` times, a ``"shifted"`` grid of ``steps - 1`` intervals from 1 down to ``t'(t'(1 / N))`` (the
    lowest training time, shifted once at construction and once more with the grid), then a last step to 0."""
    if not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an int >= 2, got {steps!r}")
    if not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be an int >= 2, got {num_train_timesteps!r}")
    t_low = float(shift_time(torch.tensor(1.0 / num_train_timesteps, dtype=torch.float64), shift))
    ts = time_grid(steps - 1, "shifted", t_max=1.0, t_min=t_low, shift=shift, dtype=torch.float64)
    return torch.cat([ts, ts.new_zeros(1)]).to(dtype)
