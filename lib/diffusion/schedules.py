"""Noise schedules, the primitive of every diffusion and flow model: ``x_t = alpha(t) x_0 + sigma(t) eps``.

Chapter: "Diffusion as stochastic differential equations" (``chapters/diffusion_sde.ipynb``); reused by the
Flows, Guidance, Latent Diffusion, ControlNet and Stable Diffusion 3 chapters.

A schedule gives ``alpha(t)``, ``sigma(t)`` and their time derivatives; the forward SDE
``dx = f_t x dt + g(t) dW`` with these marginals is *derived* (``f_t = alpha'/alpha``,
``g^2 = 2 sigma^2 (sigma'/sigma - alpha'/alpha) = -sigma^2 lambda'``), finite wherever ``alpha > 0``.

References: Song et al., "Score-Based Generative Modeling through SDEs", ICLR 2021 (VP, sub-VP, VE, eqs. 9-11);
Kingma, Salimans, Poole and Ho, "Variational Diffusion Models", 2021 (log-SNR); Nichol and Dhariwal 2021
(cosine); Liu et al. 2023 and Lipman et al. 2023 (rectified flow / flow matching, ``alpha = 1 - t, sigma = t``);
Rombach et al. 2022 (Stable Diffusion's "scaled linear" betas); Anderson 1982 (reverse-time SDE).

Glossary (time ``t`` in [0, 1]; data at ``t = 0``, noise at ``t = 1``)
--------
alpha, sigma        signal and noise scales; ``d_alpha``, ``d_sigma`` their time derivatives
lambda (log_snr)    ``log(alpha^2 / sigma^2)``, decreasing in ``t``
f_t (drift_coef)    ``alpha' / alpha``: drift ``f(x, t) = f_t x``
g(t)                diffusion coefficient, ``g^2 = d sigma^2/dt - 2 f_t sigma^2``
discrete steps      DDPM's step ``i = 1..N`` ends at ``t_i = i / N``; ``beta_i = 1 - alpha_bar_i / alpha_bar_{i-1}``
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


def as_time(t: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Time as a ``(batch,)`` tensor on ``x``'s device and dtype (a float or 0-d tensor is broadcast)."""
    if not torch.is_tensor(x):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError(f"x must have a batch dimension, got shape {tuple(x.shape)}")
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.dim() == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")
    return t


def bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a ``(batch,)`` tensor to ``(batch, 1, ..., 1)`` so it broadcasts against ``x``."""
    return v.reshape(-1, *([1] * (x.dim() - 1)))


class Schedule:
    """Base class: subclasses give ``alpha``, ``sigma``, ``d_alpha``, ``d_sigma`` (tensors of times in, same
    shape out) and ``prior_std``; marginals, the derived SDE, its reversal and the prior are shared."""

    prior_std: float = 1.0

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def d_alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def d_sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # --- derived scalars ----------------------------------------------------------------------------
    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """``lambda(t) = 2 log(alpha / sigma)``: ``+inf`` at ``sigma = 0``, ``-inf`` at ``alpha = 0``."""
        return 2 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def t_from_log_snr(self, lam: torch.Tensor, iters: int = 60) -> torch.Tensor:
        """Inverse of :meth:`log_snr` by bisection on [0, 1] (``lambda`` is decreasing); float64 inside."""
        lam64 = torch.as_tensor(lam, dtype=torch.float64)
        lo, hi = torch.zeros_like(lam64), torch.ones_like(lam64)
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > lam64  # still too little noise: move right
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return (0.5 * (lo + hi)).to(lam.dtype if torch.is_tensor(lam) and lam.is_floating_point() else torch.float64)

    def drift_coef(self, t: torch.Tensor) -> torch.Tensor:
        """``f_t = alpha' / alpha`` (``d log alpha / dt``); infinite where ``alpha = 0``."""
        return self.d_alpha(t) / self.alpha(t)

    def g2(self, t: torch.Tensor) -> torch.Tensor:
        """``g(t)^2 = 2 sigma (sigma' - sigma alpha'/alpha) = -sigma^2 d lambda/dt``."""
        s = self.sigma(t)
        return (2 * s * (self.d_sigma(t) - s * self.drift_coef(t))).clamp_min(0.0)

    def g(self, t: torch.Tensor) -> torch.Tensor:
        return self.g2(t).sqrt()

    # --- marginals and the forward SDE ---------------------------------------------------------------
    def marginal_prob(self, x0: torch.Tensor, t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``alpha(t) x_0`` (shape of ``x0``) and std ``sigma(t)`` (``(batch,)``) of ``x_t | x_0``."""
        t = as_time(t, x0)
        return bcast(self.alpha(t), x0) * x0, self.sigma(t)

    def perturb(
        self, x0: torch.Tensor, t: float | torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``x_t = alpha x_0 + sigma eps``; returns ``(x_t, eps)``."""
        mean, std = self.marginal_prob(x0, t)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        return mean + bcast(std, x0) * eps, eps

    def drift_diffusion(self, x: torch.Tensor, t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f(x, t), g(t))``: drift with ``x``'s shape and diffusion coefficient ``(batch,)``."""
        t = as_time(t, x)
        return bcast(self.drift_coef(t), x) * x, self.g(t)

    def simulate(
        self, x0: torch.Tensor, t_end: float = 1.0, steps: int = 100, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Euler-Maruyama path of the forward SDE, ``x <- x + f dt + g sqrt(dt) z``, from ``x0`` at ``t = 0``.

        Returns ``(ts (steps + 1,), xs (steps + 1, *x0.shape))``.
        """
        if not isinstance(steps, int) or steps < 1 or not 0 < t_end <= 1:
            raise ValueError(f"need an int steps >= 1 and t_end in (0, 1], got steps={steps!r}, t_end={t_end!r}")
        ts = torch.linspace(0.0, t_end, steps + 1, dtype=x0.dtype, device=x0.device)
        xs, x = [x0], x0
        for i in range(steps):
            dt = ts[i + 1] - ts[i]
            f, g = self.drift_diffusion(x, ts[i])
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x = x + f * dt + bcast(g, x) * dt.sqrt() * z
            xs.append(x)
        return ts, torch.stack(xs)

    def transition(self, t: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_t | x_s ~ N(a x_s, v I)`` for ``s < t``: ``a = alpha_t / alpha_s``, ``v = sigma_t^2 - a^2 sigma_s^2``."""
        a = self.alpha(t) / self.alpha(s)
        return a, (self.sigma(t) ** 2 - a**2 * self.sigma(s) ** 2).clamp_min(0.0)

    # --- prior ---------------------------------------------------------------------------------------
    def prior_sample(
        self,
        shape: tuple[int, ...] | torch.Size,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """A sample of the prior ``N(0, prior_std^2 I)`` that stands in for ``p_1``."""
        shape = tuple(shape)
        if len(shape) < 1 or any(not isinstance(n, int) or n < 1 for n in shape):
            raise ValueError(f"shape must be a tuple of positive ints, got {shape!r}")
        return self.prior_std * torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """``log N(z; 0, prior_std^2 I)`` summed over all but the batch dimension: ``(batch,)``."""
        if not torch.is_tensor(z) or z.dim() < 1:
            raise ValueError("z must be a tensor with a batch dimension")
        d = z[0].numel()
        sq = z.reshape(z.shape[0], -1).pow(2).sum(1) / self.prior_std**2
        return -0.5 * sq - 0.5 * d * math.log(2 * math.pi * self.prior_std**2)


def _check_positive(**kw: float) -> None:
    for name, v in kw.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
            raise ValueError(f"{name} must be a positive number, got {v!r}")


class _VariancePreserving(Schedule):
    """``sigma = sqrt(1 - alpha^2)``: subclasses give ``log_alpha2(t) = log alpha^2`` and its derivative."""

    def log_alpha2(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def d_log_alpha2(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def alpha(self, t):
        return torch.exp(0.5 * self.log_alpha2(t))

    def sigma(self, t):
        return (-torch.expm1(self.log_alpha2(t))).clamp_min(0.0).sqrt()

    def d_alpha(self, t):
        return 0.5 * self.d_log_alpha2(t) * self.alpha(t)

    def d_sigma(self, t):  # sigma sigma' = -alpha alpha' = -alpha^2 (log alpha^2)' / 2
        return -0.5 * self.d_log_alpha2(t) * self.alpha(t) ** 2 / self.sigma(t)

    def drift_coef(self, t):
        return 0.5 * self.d_log_alpha2(t)

    def g2(self, t):  # d sigma^2/dt - 2 f sigma^2 = -(log alpha^2)' (alpha^2 + sigma^2) = beta(t)
        return -self.d_log_alpha2(t)

    def log_snr(self, t):
        la2 = self.log_alpha2(t)
        return la2 - torch.log(-torch.expm1(la2))


@dataclass(frozen=True)
class VPSDE(_VariancePreserving):
    """Variance preserving, the continuous limit of DDPM: ``dx = -beta x / 2 dt + sqrt(beta) dW``,
    ``alpha = exp(-B(t)/2)`` with ``B(t) = int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / 2``."""

    beta_min: float = 0.1
    """beta(0); DDPM's beta_1 = 1e-4 times N = 1000."""
    beta_max: float = 20.0
    """beta(1); DDPM's beta_N = 0.02 times N = 1000."""

    def __post_init__(self) -> None:
        _check_positive(beta_min=self.beta_min, beta_max=self.beta_max)
        if self.beta_max < self.beta_min:
            raise ValueError(f"beta_max must be >= beta_min, got {self.beta_max} < {self.beta_min}")

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def int_beta(self, t: torch.Tensor) -> torch.Tensor:
        """``B(t) = int_0^t beta(s) ds``."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def log_alpha2(self, t):
        return -self.int_beta(t)

    def d_log_alpha2(self, t):
        return -self.beta(t)


@dataclass(frozen=True)
class SubVPSDE(VPSDE):
    """Sub-VP: VP's ``alpha`` with ``sigma = 1 - alpha^2``, always below VP's (Song et al. 2021, eq. 11);
    ``g^2 = beta (1 - exp(-2 B))``."""

    def sigma(self, t):
        return -torch.expm1(-self.int_beta(t))

    def d_sigma(self, t):
        return self.beta(t) * torch.exp(-self.int_beta(t))

    def g2(self, t):
        return (self.beta(t) * -torch.expm1(-2.0 * self.int_beta(t))).clamp_min(0.0)

    def log_snr(self, t):
        return -self.int_beta(t) - 2 * torch.log(-torch.expm1(-self.int_beta(t)))


@dataclass(frozen=True)
class VESDE(Schedule):
    """Variance exploding (SMLD / NCSN): ``alpha = 1``, ``sigma = sqrt(s(t)^2 - sigma_min^2)`` with the
    geometric scale ``s(t) = sigma_min (sigma_max / sigma_min)^t``, exact from data at ``t = 0``."""

    sigma_min: float = 0.01
    """Noise scale at t = 0."""
    sigma_max: float = 50.0
    """Noise scale at t = 1 (about the largest pairwise data distance, Song and Ermon 2020)."""

    def __post_init__(self) -> None:
        _check_positive(sigma_min=self.sigma_min, sigma_max=self.sigma_max)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"sigma_max must be > sigma_min, got {self.sigma_max} <= {self.sigma_min}")

    @property
    def prior_std(self) -> float:  # type: ignore[override]
        return self.sigma_max

    def s(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def alpha(self, t):
        return torch.ones_like(t)

    def d_alpha(self, t):
        return torch.zeros_like(t)

    def sigma(self, t):
        return (self.s(t) ** 2 - self.sigma_min**2).clamp_min(0.0).sqrt()

    def d_sigma(self, t):
        return self.s(t) ** 2 * math.log(self.sigma_max / self.sigma_min) / self.sigma(t)

    def g2(self, t):
        return 2 * math.log(self.sigma_max / self.sigma_min) * self.s(t) ** 2


@dataclass(frozen=True)
class CosineSchedule(_VariancePreserving):
    """Nichol and Dhariwal's cosine schedule: ``alpha^2 = cos^2(theta(t)) / cos^2(theta(0))`` with
    ``theta = (t + s) / (1 + s) pi / 2``; ``alpha(1) = 0``."""

    s: float = 0.008
    """Offset that keeps ``beta`` small near ``t = 0``."""

    def __post_init__(self) -> None:
        if not isinstance(self.s, (int, float)) or not 0 <= self.s < 1:
            raise ValueError(f"s must be in [0, 1), got {self.s!r}")

    def _theta(self, t):
        return (t + self.s) / (1 + self.s) * (math.pi / 2)

    def alpha(self, t):
        return (torch.cos(self._theta(t)) / math.cos(self.s / (1 + self.s) * math.pi / 2)).clamp(0.0, 1.0)

    def d_alpha(self, t):
        return -torch.sin(self._theta(t)) * (math.pi / 2 / (1 + self.s)) / math.cos(self.s / (1 + self.s) * math.pi / 2)

    def log_alpha2(self, t):
        return 2 * torch.log(self.alpha(t))

    def d_log_alpha2(self, t):
        return -2 * torch.tan(self._theta(t)) * (math.pi / 2 / (1 + self.s))


@dataclass(frozen=True)
class RectifiedFlow(Schedule):
    """Rectified flow / flow matching's straight path: ``alpha = 1 - t``, ``sigma = t``; the flow velocity
    ``alpha' x_0 + sigma' eps`` is ``eps - x_0``. ``alpha(1) = 0``: ``f`` and ``g`` are infinite at ``t = 1``."""

    def alpha(self, t):
        return 1 - t

    def sigma(self, t):
        return t.clone()

    def d_alpha(self, t):
        return -torch.ones_like(t)

    def d_sigma(self, t):
        return torch.ones_like(t)

    def log_snr(self, t):
        return 2 * (torch.log1p(-t) - torch.log(t))

    def t_from_log_snr(self, lam, iters=60):
        return torch.sigmoid(-torch.as_tensor(lam) / 2)


def scaled_linear_betas(num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """Stable Diffusion's "scaled linear" betas: ``linspace(sqrt(beta_start), sqrt(beta_end), N)^2`` (float64)."""
    if not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"num_steps must be an int >= 2, got {num_steps!r}")
    _check_positive(beta_start=beta_start, beta_end=beta_end)
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2


@dataclass(frozen=True, eq=False)
class DiscreteSchedule(_VariancePreserving):
    """A DDPM-style table ``betas (N,)`` read in continuous time: step ``i = 1..N`` ends at ``t_i = i / N``
    where ``alpha_bar_i = prod_{j <= i} (1 - beta_j)``; ``log alpha_bar`` is linear in ``t`` between knots
    (``alpha_bar = 1`` at ``t = 0``), so ``beta(t) = -N log(1 - beta_i)`` is constant on step ``i``."""

    betas: torch.Tensor = field(default_factory=scaled_linear_betas)
    """``(N,)`` per-step noise rates in (0, 1); default Stable Diffusion's scaled linear, N = 1000."""

    def __post_init__(self) -> None:
        b = self.betas
        if not torch.is_tensor(b) or b.dim() != 1 or b.numel() < 2:
            raise ValueError(f"betas must be a 1-D tensor with >= 2 entries, got {getattr(b, 'shape', b)!r}")
        if not ((b > 0) & (b < 1)).all():
            raise ValueError("betas must lie in (0, 1)")
        knots = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(torch.log1p(-b.double()), 0)])
        object.__setattr__(self, "_knots", knots)  # log alpha_bar at t = 0, 1/N, ..., 1

    @property
    def num_steps(self) -> int:
        return self.betas.numel()

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """``alpha_bar_i`` for ``i = 1..N`` (diffusers' ``alphas_cumprod``), float64."""
        return self._knots[1:].exp()

    def _segment(self, t):
        N = self.num_steps
        u = (t.double() * N).clamp(0, N)
        i = u.floor().clamp(max=N - 1).long()
        return u - i, i

    def log_alpha2(self, t):
        frac, i = self._segment(t)
        k = self._knots.to(t.device)
        return ((1 - frac) * k[i] + frac * k[i + 1]).to(t.dtype)

    def d_log_alpha2(self, t):
        _, i = self._segment(t)
        k = self._knots.to(t.device)
        return ((k[i + 1] - k[i]) * self.num_steps).to(t.dtype)


SCHEDULES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "cosine": CosineSchedule, "rf": RectifiedFlow,
             "scaled_linear": DiscreteSchedule}  # fmt: skip
"""Name -> schedule class (default arguments give the book's settings)."""
