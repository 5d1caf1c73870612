"""Discounted returns, n-step returns and generalised advantage estimation GAE(gamma, lambda).

Chapter: "Actor-critic, from the policy gradient theorem to A2C".
References: Sutton & Barto (2018), ch. 7 and 12; Schulman et al. (2016), "High-dimensional continuous
control using generalized advantage estimation", eq. (16); Pardo et al. (2018), "Time limits in RL".

Glossary (shapes: T steps, N environments)
--------
r_{t+1}     rewards                                                            (T, N)
V(s_t)      values: critic at the visited states                               (T, N)
V(s_{t+1})  next_values: critic at the true next states (final obs at episode ends)   (T, N)
delta_t     TD error  r_{t+1} + gamma (1 - terminated_t) V(s_{t+1}) - V(s_t)
A_t         GAE  sum_k (gamma lambda)^k delta_{t+k}, the sum stopped at the end of the episode
            (terminated or truncated) and at the end of the rollout.

Termination vs truncation: a *terminated* s_{t+1} is an absorbing state of the MDP, its value is 0,
so we do not bootstrap. A *truncated* episode was cut by a time limit that is not part of the MDP:
the future still exists, so the target bootstraps from V(s_{t+1}) of the true final observation.
Either way the recursion does not run across the boundary, because the next stored step belongs to
a new episode.
"""

from __future__ import annotations

import torch


def _check(name: str, x: torch.Tensor, shape: tuple[int, ...] | None = None) -> None:
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if shape is not None and tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape} like rewards, got {tuple(x.shape)}")


def _check_flags(rewards: torch.Tensor, terminated: torch.Tensor, truncated: torch.Tensor) -> None:
    for name, x in (("terminated", terminated), ("truncated", truncated)):
        _check(name, x, tuple(rewards.shape))
        if x.dtype != torch.bool:
            raise TypeError(f"{name} must be a bool tensor, got {x.dtype}")


def _check_coef(name: str, value: float) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def discounted_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """Monte Carlo returns of one finished episode: G_t = sum_{k>=0} gamma^k r_{t+k+1}.

    Args:
        rewards: (T,) rewards r_1..r_T of one episode that ends (terminates) after step T.
        gamma: discount in [0, 1].

    Returns:
        (T,) returns G_0..G_{T-1}.
    """
    _check("rewards", rewards)
    if rewards.ndim != 1:
        raise ValueError(f"rewards must have shape (T,), got {tuple(rewards.shape)}")
    _check_coef("gamma", gamma)
    G = torch.zeros_like(rewards)
    running = torch.zeros((), dtype=rewards.dtype)
    for t in reversed(range(rewards.shape[0])):
        running = rewards[t] + gamma * running  # G_t = r_{t+1} + gamma G_{t+1}
        G[t] = running
    return G


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """Generalised advantage estimates A_t (T, N) of a rollout; see the module docstring.

    ``lam = 0`` gives the one-step TD error delta_t (A2C with one-step targets); ``lam = 1`` gives the
    n-step advantage whose return runs to the end of the episode or of the rollout, bootstrapping
    from V there (the original A2C/A3C target); the lambda-return target of the critic is A_t + V(s_t).
    """
    _check("rewards", rewards)
    if rewards.ndim != 2:
        raise ValueError(f"rewards must have shape (T, N), got {tuple(rewards.shape)}")
    for name, x in (("values", values), ("next_values", next_values)):
        _check(name, x, tuple(rewards.shape))
    _check_flags(rewards, terminated, truncated)
    _check_coef("gamma", gamma)
    _check_coef("lam", lam)
    not_term = 1.0 - terminated.to(rewards.dtype)
    not_done = 1.0 - (terminated | truncated).to(rewards.dtype)
    delta = rewards + gamma * not_term * next_values - values  # (T, N)
    A = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        running = delta[t] + gamma * lam * not_done[t] * running  # A_t = delta_t + gamma lambda A_{t+1}
        A[t] = running
    return A


def n_step_returns(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """A2C's returns: G_t = r_{t+1} + ... + gamma^{n-1} r_{t+n} + gamma^n V(s_{t+n}), (T, N).

    n = T - t runs to the end of the rollout (or less, to the end of the episode). Equal to
    GAE(lambda=1) + V(s_t); the tests check this identity.
    """
    return gae(rewards, values, next_values, terminated, truncated, gamma, 1.0) + values


def episode_returns(
    rewards: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor, truncated: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE's Monte Carlo returns G_t inside a rollout, and which of them are complete.

    The return runs to the end of the episode; a truncated episode bootstraps from V(s_{t+1}) at the
    cut (the time limit is not part of the MDP). Steps whose episode has not ended by the end of the
    rollout have no Monte Carlo return yet: ``complete`` is False there.

    Returns:
        G (T, N) and complete (T, N) bool.
    """
    _check("rewards", rewards)
    _check("next_values", next_values, tuple(rewards.shape))
    _check_flags(rewards, terminated, truncated)
    zeros = torch.zeros_like(rewards)
    bootstrap = torch.where(truncated & ~terminated, next_values, zeros)  # V only at truncations
    G = gae(rewards, zeros, bootstrap, terminated, truncated, gamma, 1.0)
    done = (terminated | truncated).int()
    complete = done.flip(0).cummax(0).values.flip(0).bool()  # some episode end at or after t
    return G, complete
