"""Policy and value networks: categorical and Gaussian policies pi_theta(a|s), critics V_w(s) and Q_w(s, .).

Chapter: "Actor-critic, from the policy gradient theorem to A2C" (also used by the DDPG chapter).

Glossary
--------
pi_theta      the actor: a module mapping observations (B, obs_dim) to a ``torch.distributions`` object
V_w           state-value critic, (B, obs_dim) -> (B,)
Q_w           action-value critic for discrete actions, (B, obs_dim) -> (B, n_actions)
mlp           multilayer perceptron; by default tanh with orthogonal initialisation (the usual choice
              for small on-policy agents, see Andrychowicz et al. 2021, "What matters in on-policy RL");
              ReLU with PyTorch's default initialisation for the off-policy agents of the DDPG chapter
mu_theta      DeterministicActor: s -> a = scale * tanh(f_theta(s)) + shift, inside the action box
Q_w(s, a)     ContinuousQNet: the action-value critic of continuous actions, (B, obs_dim), (B, act_dim) -> (B,)
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Categorical, Independent, Normal

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
"""Hidden-layer activations that :func:`mlp` accepts."""


def mlp(sizes: list[int], out_gain: float = 1.0, activation: str = "tanh", init: str = "orthogonal") -> nn.Sequential:
    """MLP ``sizes[0] -> ... -> sizes[-1]`` with ``activation`` between layers (none after the last).

    ``init="orthogonal"``: orthogonal weights (hidden gain sqrt(2), last layer ``out_gain``), zero biases.
    ``init="default"``: PyTorch's default ``nn.Linear`` initialisation (uniform, fan-in scaled), with the last
    layer's weights and biases then multiplied by ``out_gain`` (``out_gain`` < 1 starts a small output).
    """
    if len(sizes) < 2 or any((not isinstance(s, int)) or s < 1 for s in sizes):
        raise ValueError(f"sizes must be >= 2 positive ints, got {sizes!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if init not in ("orthogonal", "default"):
        raise ValueError(f"init must be 'orthogonal' or 'default', got {init!r}")
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        linear = nn.Linear(sizes[i], sizes[i + 1])
        last = i == len(sizes) - 2
        if init == "orthogonal":
            nn.init.orthogonal_(linear.weight, gain=out_gain if last else math.sqrt(2.0))
            nn.init.zeros_(linear.bias)
        elif last:
            with torch.no_grad():
                linear.weight.mul_(out_gain)
                linear.bias.mul_(out_gain)
        layers.append(linear)
        if not last:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def _check_obs(obs: torch.Tensor, obs_dim: int) -> None:
    if not torch.is_tensor(obs):
        raise TypeError(f"obs must be a torch.Tensor, got {type(obs).__name__}")
    if obs.shape[-1] != obs_dim:
        raise ValueError(f"obs must have shape (..., {obs_dim}), got {tuple(obs.shape)}")


class CategoricalPolicy(nn.Module):
    """pi_theta(a|s) = softmax(logits_theta(s))_a over ``n_actions`` discrete actions."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int = 64) -> None:
        super().__init__()
        if n_actions < 2:
            raise ValueError(f"n_actions must be >= 2, got {n_actions}")
        self.obs_dim, self.n_actions = obs_dim, n_actions
        self.logits = mlp([obs_dim, hidden, hidden, n_actions], out_gain=0.01)  # near-uniform start

    def forward(self, obs: torch.Tensor) -> Categorical:
        """obs (B, obs_dim) -> Categorical with logits (B, n_actions)."""
        _check_obs(obs, self.obs_dim)
        return Categorical(logits=self.logits(obs))

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Actions (B,) int64: a sample, or argmax_a pi(a|s) when ``deterministic``."""
        dist = self(obs)
        return dist.probs.argmax(-1) if deterministic else dist.sample()


class GaussianPolicy(nn.Module):
    """pi_theta(a|s) = N(mu_theta(s), diag(exp(2 log_std))), state-independent ``log_std``.

    Actions are not squashed; the environment loop clips them to the action box (the usual A2C/PPO
    convention), and ``act(deterministic=True)`` returns the mean.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 64, log_std: float = 0.0) -> None:
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.mu = mlp([obs_dim, hidden, hidden, act_dim], out_gain=0.01)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(log_std)))

    def forward(self, obs: torch.Tensor) -> Independent:
        """obs (B, obs_dim) -> diagonal Normal over (B, act_dim); ``log_prob`` sums over act_dim."""
        _check_obs(obs, self.obs_dim)
        mu = self.mu(obs)
        return Independent(Normal(mu, self.log_std.exp().expand_as(mu)), 1)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Actions (B, act_dim): a sample, or the mean when ``deterministic``."""
        dist = self(obs)
        return dist.mean if deterministic else dist.sample()


class ValueNet(nn.Module):
    """State-value critic V_w(s): (B, obs_dim) -> (B,)."""

    def __init__(self, obs_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.obs_dim = obs_dim
        self.v = mlp([obs_dim, hidden, hidden, 1], out_gain=1.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        _check_obs(obs, self.obs_dim)
        return self.v(obs).squeeze(-1)


class QNet(nn.Module):
    """Action-value critic Q_w(s, .) for discrete actions: (B, obs_dim) -> (B, n_actions)."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int = 64) -> None:
        super().__init__()
        self.obs_dim, self.n_actions = obs_dim, n_actions
        self.q = mlp([obs_dim, hidden, hidden, n_actions], out_gain=1.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        _check_obs(obs, self.obs_dim)
        return self.q(obs)


class DeterministicActor(nn.Module):
    """Deterministic policy a = mu_theta(s) = scale * tanh(f_theta(s)) + shift, inside the box [low, high].

    ``scale = (high - low) / 2`` and ``shift = (high + low) / 2`` are buffers, so every output is a legal
    action. ``act`` ignores ``deterministic`` (the policy has no noise of its own; exploration noise is
    added by the collector's hook), so :func:`lib.rl.evaluate.evaluate` plays mu_theta greedily.
    """

    def __init__(self, obs_dim: int, low, high, hidden: int = 64, activation: str = "relu") -> None:
        super().__init__()
        low = torch.as_tensor(low, dtype=torch.float32).flatten()
        high = torch.as_tensor(high, dtype=torch.float32).flatten()
        if low.shape != high.shape or low.numel() < 1 or not bool((high > low).all()):
            raise ValueError(f"low and high must be equal-shape bounds with high > low, got {low}, {high}")
        if not bool(torch.isfinite(low).all() and torch.isfinite(high).all()):
            raise ValueError("low and high must be finite (a tanh actor needs a bounded action box)")
        self.obs_dim, self.act_dim = obs_dim, int(low.numel())
        self.register_buffer("scale", (high - low) / 2)
        self.register_buffer("shift", (high + low) / 2)
        self.f = mlp([obs_dim, hidden, hidden, self.act_dim], out_gain=0.1, activation=activation, init="default")

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """obs (B, obs_dim) -> actions (B, act_dim) inside the box."""
        _check_obs(obs, self.obs_dim)
        return self.scale * torch.tanh(self.f(obs)) + self.shift

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """Actions (B, act_dim) = mu_theta(obs), whatever ``deterministic`` says."""
        return self(obs)


class ContinuousQNet(nn.Module):
    """Action-value critic Q_w(s, a) of continuous actions: concat(s, a) -> MLP -> (B,)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 64, activation: str = "relu") -> None:
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.q = mlp([obs_dim + act_dim, hidden, hidden, 1], activation=activation, init="default")

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """obs (B, obs_dim), action (B, act_dim) -> Q (B,)."""
        _check_obs(obs, self.obs_dim)
        if not torch.is_tensor(action) or action.shape[-1] != self.act_dim or action.shape[:-1] != obs.shape[:-1]:
            shape = tuple(action.shape) if torch.is_tensor(action) else type(action).__name__
            raise ValueError(f"action must have shape {(*obs.shape[:-1], self.act_dim)}, got {shape}")
        return self.q(torch.cat([obs, action], -1)).squeeze(-1)


def make_policy(observation_space, action_space, hidden: int = 64) -> nn.Module:
    """The policy that fits a gymnasium ``action_space``: Discrete -> categorical, Box -> Gaussian.

    Raises ``TypeError`` for any other space (MultiDiscrete, Dict, ...) and ``ValueError`` for an
    observation space that is not a flat ``Box``.
    """
    from gymnasium import spaces

    if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 1:
        raise ValueError(f"observation_space must be a flat Box, got {observation_space!r}")
    obs_dim = int(observation_space.shape[0])
    if isinstance(action_space, spaces.Discrete):
        return CategoricalPolicy(obs_dim, int(action_space.n), hidden)
    if isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
        return GaussianPolicy(obs_dim, int(action_space.shape[0]), hidden)
    raise TypeError(f"action_space must be Discrete or a flat Box, got {action_space!r}")
