"""Exploration noise for deterministic policies: Gaussian, Ornstein-Uhlenbeck, and a uniform warm-up.

Chapter: "DDPG, the deterministic policy gradient" (``chapters/ddpg.ipynb``).
References: Uhlenbeck & Ornstein (1930); Lillicrap et al. (2016) DDPG (OU noise, theta = 0.15,
sigma = 0.2); Fujimoto et al. (2018) TD3 (Gaussian noise, sigma = 0.1).

A deterministic actor mu_theta(s) never explores on its own, so the collector adds noise to the action
it executes (``RolloutCollector(explore=...)``). Noise is expressed in units of the action box's
half-width ``scale = (high - low) / 2``, so ``sigma = 0.1`` means 10 % of the range on each side.

Glossary (N parallel environments, act_dim action dimensions)
--------
eps_k        Gaussian noise, i.i.d. N(0, sigma^2) at every step k
x_k          OU state, (N, act_dim): x_{k+1} = x_k - theta x_k dt + sigma sqrt(dt) xi_k, xi_k ~ N(0, I)
rho(l)       the OU autocorrelation at lag l: corr(x_k, x_{k+l}) = (1 - theta dt)^l in the stationary regime
warmup_steps the first this-many calls return uniform random actions in the box (the policy is ignored)
"""

from __future__ import annotations

import math

import numpy as np
import torch


class ActionNoise:
    """Base class of the collector's exploration hook: ``noise(a)`` returns the action to execute.

    ``__call__(action)`` takes the greedy actions (N, act_dim) and returns uniform random actions during
    the first ``warmup_steps`` calls, otherwise ``action + scale * sample()``. ``reset(done)`` is called
    by the collector with the (N,) bool mask of environments whose episode just ended.
    """

    def __init__(self, low, high, num_envs: int = 1, warmup_steps: int = 0, generator: torch.Generator | None = None):
        low = torch.as_tensor(np.asarray(low), dtype=torch.float32).flatten()
        high = torch.as_tensor(np.asarray(high), dtype=torch.float32).flatten()
        if low.shape != high.shape or not bool((high > low).all()) or not bool(torch.isfinite(high - low).all()):
            raise ValueError(f"low and high must be finite equal-shape bounds with high > low, got {low}, {high}")
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative int, got {warmup_steps!r}")
        self.low, self.high, self.num_envs, self.warmup_steps = low, high, num_envs, warmup_steps
        self.scale = (high - low) / 2
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.calls = 0

    @property
    def shape(self) -> tuple[int, int]:
        """(N, act_dim), the shape of the actions this hook handles."""
        return (self.num_envs, int(self.low.numel()))

    def sample(self) -> torch.Tensor:
        """Noise (N, act_dim) in units of ``scale``."""
        raise NotImplementedError

    def reset(self, done: np.ndarray | torch.Tensor) -> None:
        """Forget the state of the environments in the (N,) mask ``done`` (no state: nothing to do)."""

    def __call__(self, action: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(action) or tuple(action.shape) != self.shape:
            got = tuple(action.shape) if torch.is_tensor(action) else type(action).__name__
            raise ValueError(f"action must be a tensor of shape {self.shape}, got {got}")
        self.calls += 1
        if self.calls <= self.warmup_steps:
            u = torch.rand(self.shape, generator=self.generator)
            return self.low + (self.high - self.low) * u
        return action + self.scale * self.sample()


class GaussianNoise(ActionNoise):
    """eps_k ~ N(0, sigma^2 I), independent across steps (TD3's choice, sigma = 0.1)."""

    def __init__(self, low, high, num_envs: int = 1, sigma: float = 0.1, warmup_steps: int = 0, generator=None):
        super().__init__(low, high, num_envs, warmup_steps, generator)
        if not sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {sigma!r}")
        self.sigma = float(sigma)

    def sample(self) -> torch.Tensor:
        return self.sigma * torch.randn(self.shape, generator=self.generator)


class OUNoise(ActionNoise):
    """Ornstein-Uhlenbeck noise (Euler-Maruyama, mean 0), reset to 0 at each episode's end (DDPG's choice).

    x_{k+1} = x_k - theta x_k dt + sigma sqrt(dt) xi_k. With dt = 1 and the DDPG paper's theta = 0.15,
    sigma = 0.2: lag-one correlation 0.85 and stationary standard deviation 0.2 / sqrt(1 - 0.85^2) = 0.38.
    """

    def __init__(self, low, high, num_envs: int = 1, theta: float = 0.15, sigma: float = 0.2, dt: float = 1.0,
                 warmup_steps: int = 0, generator=None):  # fmt: skip
        super().__init__(low, high, num_envs, warmup_steps, generator)
        if not 0 < theta * dt < 2:
            raise ValueError(f"theta * dt must be in (0, 2) for a stationary process, got {theta * dt!r}")
        if not sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {sigma!r}")
        self.theta, self.sigma, self.dt = float(theta), float(sigma), float(dt)
        self.x = torch.zeros(self.shape)

    def sample(self) -> torch.Tensor:
        xi = torch.randn(self.shape, generator=self.generator)
        self.x = self.x - self.theta * self.x * self.dt + self.sigma * math.sqrt(self.dt) * xi
        return self.x.clone()

    def reset(self, done) -> None:
        done = torch.as_tensor(np.asarray(done), dtype=torch.bool)
        if done.shape != (self.num_envs,):
            raise ValueError(f"done must have shape ({self.num_envs},), got {tuple(done.shape)}")
        self.x[done] = 0.0


def ou_autocorrelation(theta: float, dt: float, lag) -> np.ndarray:
    """Stationary autocorrelation of :class:`OUNoise` at ``lag`` steps: (1 - theta dt)^lag.

    From x_{k+1} = a x_k + b xi_k with a = 1 - theta dt: Cov(x_{k+l}, x_k) = a^l Var(x_k) (the xi's after
    step k are independent of x_k), and Var is constant in the stationary regime.
    """
    if not 0 < theta * dt < 2:
        raise ValueError(f"theta * dt must be in (0, 2), got {theta * dt!r}")
    return (1.0 - theta * dt) ** np.asarray(lag, dtype=np.float64)


def ou_stationary_std(theta: float, sigma: float, dt: float) -> float:
    """Stationary standard deviation of :class:`OUNoise`: sigma sqrt(dt) / sqrt(1 - (1 - theta dt)^2)."""
    if not 0 < theta * dt < 2:
        raise ValueError(f"theta * dt must be in (0, 2), got {theta * dt!r}")
    return sigma * math.sqrt(dt) / math.sqrt(1.0 - (1.0 - theta * dt) ** 2)
