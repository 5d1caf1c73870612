"""What a diffusion network predicts, and converters between all the choices.

Chapter: "Diffusion as stochastic differential equations" (``chapters/diffusion_sde.ipynb``); the Flows and
SD3 chapters use ``"velocity"``, the Guidance chapter combines predictions.

Every prediction is an affine function of the pair ``(x0_hat, eps_hat)`` given ``x_t`` and ``t``, so each
converter goes through that pair. Divisions: by ``alpha^2 + sigma^2`` (``v``) and by
``alpha sigma' - sigma alpha' = alpha^2 d(sigma/alpha)/dt > 0`` (``velocity``), which never vanish; by
``sigma`` to get ``eps`` from ``x0`` (and ``x0`` from ``score``-free sources never needs it); by ``alpha`` to
get ``x0`` from ``eps`` or ``score``: there, at ``alpha = 0`` (rectified flow and cosine at ``t = 1``),
an ``eps`` prediction carries no information about ``x0`` and the result is not finite.

References: Ho et al. 2020 (eps); Salimans and Ho, "Progressive Distillation", 2022 (v); Lipman et al. 2023 and
Liu et al. 2023 (flow velocity); Efron 2011 / Tweedie (x0 from the score).

Glossary (``x_t = alpha x0 + sigma eps``)
--------
eps        the noise
x0         the clean data, ``E[x0 | x_t]`` at the optimum
v          ``alpha eps - sigma x0`` (Salimans and Ho)
velocity   ``alpha' x0 + sigma' eps``: the probability-flow ODE velocity ``dx/dt`` (``eps - x0`` for rectified flow)
score      ``grad log p_t(x_t) = -eps / sigma``
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lib.diffusion.schedules import Schedule, as_time, bcast

PREDICTIONS = ("eps", "x0", "v", "velocity", "score")


def check_prediction(name: str, value: str) -> None:
    if value not in PREDICTIONS:
        raise ValueError(f"{name} must be one of {PREDICTIONS}, got {value!r}")


def _coefs(x: torch.Tensor, t: float | torch.Tensor, schedule: Schedule):
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule (VPSDE, RectifiedFlow, ...), got {type(schedule).__name__}")
    t = as_time(t, x)
    return [bcast(c, x) for c in (schedule.alpha(t), schedule.sigma(t), schedule.d_alpha(t), schedule.d_sigma(t))]


def to_x0_eps(
    out: torch.Tensor, x_t: torch.Tensor, t: float | torch.Tensor, schedule: Schedule, prediction: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0_hat, eps_hat)`` from a network output ``out`` in ``prediction`` at ``(x_t, t)``."""
    check_prediction("prediction", prediction)
    a, s, da, ds = _coefs(x_t, t, schedule)
    if prediction == "eps":
        return (x_t - s * out) / a, out
    if prediction == "x0":
        return out, (x_t - a * out) / s
    if prediction == "score":
        eps = -s * out
        return (x_t - s * eps) / a, eps
    if prediction == "v":  # [x; v] = [[a, s], [-s, a]] [x0; eps]
        n = a**2 + s**2
        return (a * x_t - s * out) / n, (s * x_t + a * out) / n
    det = a * ds - s * da  # velocity: [x; u] = [[a, s], [a', s']] [x0; eps]
    return (ds * x_t - s * out) / det, (a * out - da * x_t) / det


def from_x0_eps(
    x0: torch.Tensor, eps: torch.Tensor, x_t: torch.Tensor, t: float | torch.Tensor, schedule: Schedule, prediction: str
) -> torch.Tensor:
    """The ``prediction`` that corresponds to ``(x0, eps)`` at ``(x_t, t)`` (``score`` divides by ``sigma``)."""
    check_prediction("prediction", prediction)
    a, s, da, ds = _coefs(x_t, t, schedule)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "score":
        return -eps / s
    if prediction == "v":
        return a * eps - s * x0
    return da * x0 + ds * eps


def convert(
    out: torch.Tensor, x_t: torch.Tensor, t: float | torch.Tensor, schedule: Schedule, src: str, dst: str
) -> torch.Tensor:
    """Convert ``out`` from prediction ``src`` to ``dst`` (each one of :data:`PREDICTIONS`)."""
    check_prediction("src", src)
    check_prediction("dst", dst)
    if src == dst:
        return out
    return from_x0_eps(*to_x0_eps(out, x_t, t, schedule, src), x_t, t, schedule, dst)


class Denoiser:
    """A network with what it predicts and its fixed conditioning: ``denoiser(x, t) = model(x, t, **cond)``.

    Samplers, likelihoods and guidance take a ``Denoiser`` and a schedule; :meth:`x0_eps`, :meth:`velocity`
    and :meth:`score` read its output in any form.
    """

    def __init__(self, model: Callable[..., torch.Tensor], prediction: str = "eps", **cond: Any) -> None:
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        check_prediction("prediction", prediction)
        self.model, self.prediction, self.cond = model, prediction, cond

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x, t, **self.cond)

    def x0_eps(self, x: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0_hat, eps_hat)`` at ``(x, t)``."""
        return to_x0_eps(self(x, t), x, t, schedule, self.prediction)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
        """Probability-flow ODE velocity ``alpha' x0_hat + sigma' eps_hat`` (no division for ``velocity``/``v``)."""
        if self.prediction == "velocity":
            return self(x, t)
        return convert(self(x, t), x, t, schedule, self.prediction, "velocity")

    def score(self, x: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
        """``grad_x log p_t(x) = -eps_hat / sigma``."""
        return convert(self(x, t), x, t, schedule, self.prediction, "score")
