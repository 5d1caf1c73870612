"""Experience replay: a fixed-capacity ring buffer of transitions, sampled uniformly.

Chapter: "DDPG, the deterministic policy gradient" (``chapters/ddpg.ipynb``).
Reference: Lin (1992) experience replay; Mnih et al. (2015) DQN; Lillicrap et al. (2016) DDPG.

Consecutive transitions of one trajectory are strongly correlated; sampling minibatches uniformly
from the last ``capacity`` transitions makes them close to i.i.d., which is what stochastic gradient
descent on the critic's regression loss assumes. ``terminated`` is stored (not ``done``): a time-limit
truncation is not a terminal state, so the TD target still bootstraps from Q(s', mu(s')) there.

Glossary (B transitions)
--------
obs          s        (B, obs_dim)
actions      a        (B, act_dim), the executed (clipped) action
rewards      r        (B,)
next_obs     s'       (B, obs_dim), the true next state (the final observation at an episode's end)
terminated   s' is terminal (B,) bool: the target is r alone
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lib.rl.rollout import Rollout


@dataclass
class Transitions:
    """A minibatch of transitions (see the module glossary for shapes)."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor


class ReplayBuffer:
    """Ring buffer of the last ``capacity`` transitions; ``sample`` draws uniformly with replacement."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int) -> None:
        for name, value in (("capacity", capacity), ("obs_dim", obs_dim), ("act_dim", act_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.capacity, self.obs_dim, self.act_dim = capacity, obs_dim, act_dim
        self.obs = torch.zeros(capacity, obs_dim)
        self.actions = torch.zeros(capacity, act_dim)
        self.rewards = torch.zeros(capacity)
        self.next_obs = torch.zeros(capacity, obs_dim)
        self.terminated = torch.zeros(capacity, dtype=torch.bool)
        self.pos = 0
        """Index of the next write (wraps around)."""
        self.size = 0
        """Number of stored transitions, at most ``capacity``."""
        self.added = 0
        """Transitions ever added (``added - size`` have been overwritten)."""

    def __len__(self) -> int:
        return self.size

    def add(self, obs, actions, rewards, next_obs, terminated) -> None:
        """Append B transitions: obs (B, obs_dim), actions (B, act_dim), rewards (B,), next_obs, terminated (B,)."""
        obs, next_obs = torch.as_tensor(obs, dtype=torch.float32), torch.as_tensor(next_obs, dtype=torch.float32)
        actions = torch.as_tensor(actions, dtype=torch.float32)
        rewards = torch.as_tensor(rewards, dtype=torch.float32)
        terminated = torch.as_tensor(terminated)
        B = obs.shape[0] if obs.dim() == 2 else -1
        expected = {
            "obs": (obs, (B, self.obs_dim)),
            "actions": (actions, (B, self.act_dim)),
            "rewards": (rewards, (B,)),
            "next_obs": (next_obs, (B, self.obs_dim)),
            "terminated": (terminated, (B,)),
        }
        for name, (value, shape) in expected.items():
            if tuple(value.shape) != shape:
                raise ValueError(f"{name} must have shape {shape} (B = len(obs)), got {tuple(value.shape)}")
        if terminated.dtype != torch.bool:
            raise TypeError(f"terminated must be bool, got {terminated.dtype}")
        if B > self.capacity:  # only the last `capacity` survive
            obs, actions, rewards, next_obs, terminated = (
                x[-self.capacity :] for x in (obs, actions, rewards, next_obs, terminated)
            )
            self.added += B - self.capacity
            B = self.capacity
        idx = (self.pos + torch.arange(B)) % self.capacity
        self.obs[idx], self.actions[idx], self.rewards[idx] = obs, actions, rewards
        self.next_obs[idx], self.terminated[idx] = next_obs, terminated
        self.pos = (self.pos + B) % self.capacity
        self.size = min(self.size + B, self.capacity)
        self.added += B

    def add_rollout(self, ro: Rollout) -> None:
        """Append every step of a :class:`~lib.rl.rollout.Rollout` (T, N) in time order (t-major)."""
        act = ro.actions.flatten(0, 1).float()
        self.add(
            ro.obs.flatten(0, 1),
            act.reshape(act.shape[0], -1),
            ro.rewards.flatten(),
            ro.next_obs.flatten(0, 1),
            ro.terminated.flatten(),
        )

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Transitions:
        """``batch_size`` transitions drawn uniformly with replacement from the stored ones."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if self.size == 0:
            raise ValueError("cannot sample from an empty ReplayBuffer")
        idx = torch.randint(self.size, (batch_size,), generator=generator)
        return Transitions(
            self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.terminated[idx]
        )
