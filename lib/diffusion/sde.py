"""Forward SDEs of diffusion models: VP (DDPM's limit), VE (SMLD / NCSN) and sub-VP, and their reversals.

Chapter: "Diffusion as stochastic differential equations" (``chapters/diffusion_sde.ipynb``).

References: Song, Sohl-Dickstein, Kingma, Kumar, Ermon and Poole, "Score-Based Generative Modeling through
Stochastic Differential Equations", ICLR 2021 (eqs. 5-6 reverse SDE and PF-ODE, eqs. 9-11 VE/VP/sub-VP,
appendix B marginals); Ho, Jain and Abbeel, "Denoising Diffusion Probabilistic Models", 2020; Anderson,
"Reverse-time diffusion equation models", 1982.

Glossary (time ``t`` in [0, 1]; data at ``t = 0``, noise at ``t = 1``)
--------
f(x, t) = f_t x    drift; linear in ``x`` for all three SDEs (``f_t`` is ``drift_coef``)
g(t)               diffusion coefficient, ``dx = f dt + g dW``
alpha(t), sigma(t) marginal ``x_t | x_0 ~ N(alpha x_0, sigma^2 I)`` (``marginal_prob`` returns them)
beta(t)            VP/sub-VP noise rate, ``beta_min + t (beta_max - beta_min)``
score_fn(x, t)     any callable returning ``grad_x log p_t(x)``; conditioning lives in its closure
reverse SDE        ``dx = [f - g^2 score] dt + g dW_bar``, integrated from ``t = 1`` down to ``0``
PF-ODE             ``dx/dt = f - g^2 score / 2``: same marginals as the SDE, deterministic
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


class LinearSDE:
    """Base class: an SDE ``dx = f_t x dt + g(t) dW`` whose marginal given ``x_0`` is Gaussian.

    Subclasses give ``alpha(t)``, ``sigma(t)``, ``drift_coef(t)`` and ``g(t)`` in closed form (tensors of
    times in, tensors out); everything else (drift/diffusion on ``x``, marginals, priors, reverse SDE,
    probability-flow ODE, transition kernels) is shared. A new noise schedule (e.g. rectified flow's
    ``alpha = 1 - t, sigma = t``) only needs those four functions and ``prior_std``.
    """

    prior_std: float = 1.0

    # --- schedule, implemented by subclasses --------------------------------------------------------
    def alpha(self, t: torch.Tensor) -> torch.Tensor:  # mean coefficient of x_0
        raise NotImplementedError

    def sigma(self, t: torch.Tensor) -> torch.Tensor:  # marginal standard deviation
        raise NotImplementedError

    def drift_coef(self, t: torch.Tensor) -> torch.Tensor:  # f_t with f(x, t) = f_t x
        raise NotImplementedError

    def g(self, t: torch.Tensor) -> torch.Tensor:  # diffusion coefficient
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------------
    def drift_diffusion(self, x: torch.Tensor, t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f(x, t), g(t))``: drift with ``x``'s shape and diffusion coefficient of shape ``(batch,)``."""
        t = as_time(t, x)
        return bcast(self.drift_coef(t), x) * x, self.g(t)

    sde = drift_diffusion

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

    def simulate(
        self, x0: torch.Tensor, t_end: float = 1.0, steps: int = 100, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Euler-Maruyama path of the forward SDE, ``x <- x + f dt + g sqrt(dt) z``, from ``x0`` at ``t = 0``.

        Returns ``(ts (steps + 1,), xs (steps + 1, *x0.shape))``.
        """
        if not isinstance(steps, int) or steps < 1 or not 0 < t_end:
            raise ValueError(f"need an int steps >= 1 and t_end > 0, got steps={steps!r}, t_end={t_end!r}")
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
        """``x_t | x_s ~ N(a x_s, v I)`` for ``s < t``: returns ``(a, v)`` with ``a = alpha_t / alpha_s``,
        ``v = sigma_t^2 - a^2 sigma_s^2`` (Markov property of the linear SDE)."""
        a = self.alpha(t) / self.alpha(s)
        return a, (self.sigma(t) ** 2 - a**2 * self.sigma(s) ** 2).clamp_min(0.0)

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
        """``log N(z; 0, prior_std^2 I)`` summed over all but the batch dimension: shape ``(batch,)``."""
        if not torch.is_tensor(z) or z.dim() < 1:
            raise ValueError("z must be a tensor with a batch dimension")
        d = z[0].numel()
        sq = z.reshape(z.shape[0], -1).pow(2).sum(1) / self.prior_std**2
        return -0.5 * sq - 0.5 * d * math.log(2 * math.pi * self.prior_std**2)

    def reverse_drift_diffusion(
        self, x: torch.Tensor, t: float | torch.Tensor, score_fn: ScoreFn
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reverse-time SDE (Anderson 1982): drift ``f - g^2 score`` and diffusion ``g``; integrate with
        ``dt < 0`` from ``t = 1`` to ``t = 0``."""
        t = as_time(t, x)
        f, g = self.drift_diffusion(x, t)
        return f - bcast(g**2, x) * score_fn(x, t), g

    def probability_flow_drift(self, x: torch.Tensor, t: float | torch.Tensor, score_fn: ScoreFn) -> torch.Tensor:
        """Velocity of the probability-flow ODE, ``dx/dt = f - g^2 score / 2``."""
        t = as_time(t, x)
        f, g = self.drift_diffusion(x, t)
        return f - 0.5 * bcast(g**2, x) * score_fn(x, t)


def _check_positive(**kw: float) -> None:
    for name, v in kw.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
            raise ValueError(f"{name} must be a positive number, got {v!r}")


@dataclass(frozen=True)
class VPSDE(LinearSDE):
    """Variance preserving SDE, the continuous limit of DDPM: ``dx = -beta x / 2 dt + sqrt(beta) dW``.

    ``alpha(t) = exp(-B(t)/2)`` with ``B(t) = int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / 2``,
    ``sigma(t)^2 = 1 - alpha(t)^2``.
    """

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

    def alpha(self, t):
        return torch.exp(-0.5 * self.int_beta(t))

    def sigma(self, t):
        return (-torch.expm1(-self.int_beta(t))).clamp_min(0.0).sqrt()

    def drift_coef(self, t):
        return -0.5 * self.beta(t)

    def g(self, t):
        return self.beta(t).sqrt()


@dataclass(frozen=True)
class SubVPSDE(VPSDE):
    """Sub-VP SDE: VP's drift with ``g^2 = beta (1 - exp(-2 B(t)))``; ``sigma(t) = 1 - alpha(t)^2``, always
    below the VP's std (Song et al. 2021, eq. 11)."""

    def sigma(self, t):
        return -torch.expm1(-self.int_beta(t))

    def g(self, t):
        return (self.beta(t) * -torch.expm1(-2.0 * self.int_beta(t))).clamp_min(0.0).sqrt()


@dataclass(frozen=True)
class VESDE(LinearSDE):
    """Variance exploding SDE (SMLD / NCSN's limit): ``dx = sqrt(d[s(t)^2]/dt) dW`` with the geometric
    noise scale ``s(t) = sigma_min (sigma_max / sigma_min)^t``.

    Started from the data at ``t = 0``, the marginal std is ``sigma(t) = sqrt(s(t)^2 - sigma_min^2)`` exactly
    (Song et al. approximate it by ``s(t)``, treating the data as already blurred by ``sigma_min``).
    """

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

    def sigma(self, t):
        return (self.s(t) ** 2 - self.sigma_min**2).clamp_min(0.0).sqrt()

    def drift_coef(self, t):
        return torch.zeros_like(t)

    def g(self, t):
        return self.s(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))
