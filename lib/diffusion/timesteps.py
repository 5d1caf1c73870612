"""Where in time to look: sampling grids (uniform, EDM's rho, uniform log-SNR, SD3's shift) and training-time
distributions (uniform, logit-normal, SD3's mode sampling, cosmap, EDM's log-normal).

Chapter: "Diffusion as stochastic differential equations" (``chapters/diffusion_sde.ipynb``); the SD3 chapter
uses the logit-normal sampler and the shifted grid.

References: Karras, Aittala, Aila and Laine, "Elucidating the Design Space of Diffusion-Based Generative Models",
2022 (rho grid, eq. 5; log-normal training noise, table 1); Kingma et al. 2021 (log-SNR); Esser et al., "Scaling
Rectified Flow Transformers for High-Resolution Image Synthesis", 2024 (logit-normal, mode, cosmap, section 3.1;
resolution shift ``t' = s t / (1 + (s - 1) t)``, section 5.3.2).

Glossary
--------
grid             ``steps + 1`` decreasing times ``t_max = t_0 > ... > t_steps = t_min``
noise level s    ``sigma / alpha = exp(-lambda / 2)``, EDM's ``sigma``; the rho grid is uniform in ``s^(1/rho)``
u                a uniform ``U(0, 1)`` draw, mapped to ``t`` by the training-time sampler
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lib.diffusion.schedules import Schedule

GRIDS = ("uniform", "edm", "logsnr", "shifted")


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's resolution shift ``t' = s t / (1 + (s - 1) t)``: ``s > 1`` spends more steps at high noise."""
    if not shift > 0:
        raise ValueError(f"shift must be positive, got {shift!r}")
    return shift * t / (1 + (shift - 1) * t)


def time_grid(
    steps: int,
    kind: str = "uniform",
    schedule: Schedule | None = None,
    *,
    t_max: float = 1.0,
    t_min: float = 1e-3,
    rho: float = 7.0,
    shift: float = 3.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``steps + 1`` times from ``t_max`` down to ``t_min``, spaced by ``kind``:

    ``"uniform"`` in ``t``; ``"edm"`` uniform in ``s^(1/rho)`` with ``s = sigma/alpha`` (needs ``schedule``);
    ``"logsnr"`` uniform in ``lambda`` (needs ``schedule``); ``"shifted"`` a uniform grid through
    :func:`shift_time` (ends included, so it runs from ``shift_time(t_max)`` to ``shift_time(t_min)``).
    ``"edm"`` and ``"logsnr"`` need ``alpha(t_max) > 0`` and ``sigma(t_min) > 0`` (finite log-SNR).
    ``t_min = 0`` is allowed (flow models); samplers that evaluate the model at ``t_min`` (Heun, the adaptive
    ODE) then need a prediction that does not divide by ``sigma`` there (not ``x0`` or ``score``).
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if kind not in GRIDS:
        raise ValueError(f"kind must be one of {GRIDS}, got {kind!r}")
    if not 0 <= t_min < t_max <= 1:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min!r}, t_max={t_max!r}")
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if kind == "uniform":
        ts = t_max + u * (t_min - t_max)
    elif kind == "shifted":
        ts = shift_time(t_max + u * (t_min - t_max), shift)
    else:
        if not isinstance(schedule, Schedule):
            raise ValueError(f"kind={kind!r} needs a schedule")
        ends = torch.tensor([t_max, t_min], dtype=torch.float64)
        lam_hi, lam_lo = schedule.log_snr(ends).tolist()  # lambda(t_max) < lambda(t_min)
        if not (math.isfinite(lam_hi) and math.isfinite(lam_lo)):
            raise ValueError(f"kind={kind!r} needs a finite log-SNR at t_max and t_min (alpha(t_max) > 0): lower t_max")
        if kind == "logsnr":
            lam = lam_hi + u * (lam_lo - lam_hi)
        else:
            if not rho > 0:
                raise ValueError(f"rho must be positive, got {rho!r}")
            s_max, s_min = math.exp(-lam_hi / 2), math.exp(-lam_lo / 2)
            s = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
            lam = -2 * torch.log(s)
        ts = schedule.t_from_log_snr(lam)
        ts[0], ts[-1] = t_max, t_min  # exact ends (bisection is accurate to 1e-16 anyway)
    return ts.to(dtype=dtype, device=device)


T_SAMPLERS = ("uniform", "logit_normal", "mode", "cosmap", "edm")


@dataclass(frozen=True)
class TimeSampler:
    """Training times ``t (n,)`` in ``[t_min, t_max]``: ``t = F(u)`` for ``u ~ U(0, 1)`` or a Gaussian draw.

    ``"uniform"``; ``"logit_normal"``: ``t = sigmoid(m + s z)``; ``"mode"``: ``t = 1 - u - s (cos^2(pi u / 2)
    - 1 + u)`` (``s`` = ``scale``, in ``[-1, 2/(pi - 2)]``); ``"cosmap"``: ``t = 1 - 1 / (tan(pi u / 2) + 1)``;
    ``"edm"``: ``ln(sigma/alpha) ~ N(m, s)`` mapped to ``t`` through ``schedule`` (EDM: ``m = -1.2, s = 1.2``).
    """

    kind: str = "uniform"
    """One of :data:`T_SAMPLERS`."""
    m: float = 0.0
    """Location: logit-normal mean; EDM's ``P_mean``."""
    s: float = 1.0
    """Scale: logit-normal std; SD3 mode's ``s``; EDM's ``P_std``."""
    t_min: float = 1e-3
    """Smallest time (clamped to)."""
    t_max: float = 1.0
    """Largest time (clamped to)."""
    schedule: Schedule | None = None
    """Needed by ``"edm"`` only."""

    def __post_init__(self) -> None:
        if self.kind not in T_SAMPLERS:
            raise ValueError(f"kind must be one of {T_SAMPLERS}, got {self.kind!r}")
        if not 0 <= self.t_min < self.t_max <= 1:
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={self.t_min!r}, t_max={self.t_max!r}")
        if self.kind in ("logit_normal", "edm") and not self.s > 0:
            raise ValueError(f"s must be positive for kind={self.kind!r}, got {self.s!r}")
        if self.kind == "mode" and not -1 <= self.s <= 2 / (math.pi - 2):
            raise ValueError(f"mode sampling needs s in [-1, 2/(pi - 2)] (monotone map), got {self.s!r}")
        if self.kind == "edm" and not isinstance(self.schedule, Schedule):
            raise ValueError("kind='edm' needs a schedule")

    def __call__(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if self.kind in ("logit_normal", "edm"):
            z = torch.randn(n, generator=generator, dtype=torch.float64)
            if self.kind == "logit_normal":
                t = torch.sigmoid(self.m + self.s * z)
            else:  # ln(sigma/alpha) = m + s z  <=>  lambda = -2 (m + s z)
                t = self.schedule.t_from_log_snr(-2 * (self.m + self.s * z))
        else:
            u = torch.rand(n, generator=generator, dtype=torch.float64)
            if self.kind == "uniform":
                t = self.t_min + (self.t_max - self.t_min) * u
            elif self.kind == "mode":
                t = 1 - u - self.s * (torch.cos(math.pi / 2 * u) ** 2 - 1 + u)
            else:
                t = 1 - 1 / (torch.tan(math.pi / 2 * u) + 1)
        return t.clamp(self.t_min, self.t_max).to(dtype=dtype, device=device)

    def density(self, t: torch.Tensor) -> torch.Tensor:
        """The probability density ``pi(t)`` on (0, 1) before clamping to ``[t_min, t_max]`` (``"uniform"``: on it).

        ``t = F(u)`` with ``u ~ U(0, 1)`` has ``pi(t) = 1 / |F'(F^{-1}(t))|``: for ``"cosmap"``,
        ``F^{-1}(t) = (2 / pi) atan(t / (1 - t))`` and ``pi(t) = 2 / (pi (1 - 2t + 2t^2))``; for ``"mode"``,
        ``F'(u) = -1 - s + s (pi / 2) sin(pi u)`` with ``F^{-1}`` found by bisection (``F`` is monotone).
        ``"logit_normal"``: ``N(logit t; m, s^2) / (t (1 - t))``; ``"edm"``: ``N(lambda; -2m, (2s)^2) |lambda'(t)|``.
        """
        if not torch.is_tensor(t) or not t.is_floating_point():
            raise TypeError(f"t must be a floating-point tensor, got {type(t).__name__}")
        if self.kind == "uniform":
            inside = (t >= self.t_min) & (t <= self.t_max)
            return torch.where(inside, 1.0 / (self.t_max - self.t_min), 0.0).to(t.dtype)
        if self.kind == "logit_normal":
            logit = torch.log(t) - torch.log1p(-t)
            return torch.exp(-0.5 * ((logit - self.m) / self.s) ** 2) / (self.s * math.sqrt(2 * math.pi) * t * (1 - t))
        if self.kind == "cosmap":
            return 2 / (math.pi * (1 - 2 * t + 2 * t**2))
        if self.kind == "mode":
            lo, hi = torch.zeros_like(t, dtype=torch.float64), torch.ones_like(t, dtype=torch.float64)
            for _ in range(60):  # F decreases from F(0) = 1 to F(1) = 0
                u = (lo + hi) / 2
                above = 1 - u - self.s * (torch.cos(math.pi / 2 * u) ** 2 - 1 + u) > t.double()
                lo, hi = torch.where(above, u, lo), torch.where(above, hi, u)
            u = (lo + hi) / 2
            return (1 / (1 + self.s - self.s * math.pi / 2 * torch.sin(math.pi * u))).to(t.dtype)
        sch = self.schedule  # "edm": lambda = -2 (m + s z), z ~ N(0, 1)
        lam = sch.log_snr(t)
        d_lam = 2 * (sch.d_alpha(t) / sch.alpha(t) - sch.d_sigma(t) / sch.sigma(t))  # lambda = 2 log(alpha / sigma)
        z = (lam + 2 * self.m) / (2 * self.s)
        return torch.exp(-0.5 * z**2) / (2 * self.s * math.sqrt(2 * math.pi)) * d_lam.abs()
