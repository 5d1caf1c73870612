"""Synchronous vectorised environments and on-policy rollout storage.

Chapter: "Actor-critic, from the policy gradient theorem to A2C".

We run ``N`` copies of an environment in lock step (``gymnasium.vector.SyncVectorEnv``) with the
``SAME_STEP`` autoreset mode: when copy ``i`` ends an episode at step ``t``, the observation returned
is already the first one of its next episode and the true last observation s_{t+1} is in
``info["final_obs"][i]``. Every call to ``step`` is thus a real transition (no dummy reset steps to
mask, unlike the default ``NEXT_STEP`` mode), and we store the true next observation ``next_obs`` of
every transition, which is what bootstrapping on truncation needs.

Glossary (shapes: T steps per rollout, N environments)
--------
obs          s_t            (T, N, obs_dim)
actions      a_t            (T, N) int64 or (T, N, act_dim)
rewards      r_{t+1}        (T, N)
terminated   s_{t+1} is terminal: no future reward, do not bootstrap          (T, N) bool
truncated    the episode was cut (time limit) at s_{t+1}: bootstrap from V(s_{t+1})  (T, N) bool
next_obs     s_{t+1}, the true next state (the final observation when the episode ended)

Off-policy collection (DDPG chapter): ``explore`` is an optional hook (``lib.rl.noise.ActionNoise``) that
turns the policy's actions into the executed ones (Gaussian or OU noise, uniform warm-up) and is told
which episodes ended (``explore.reset(done)``, so OU noise restarts at 0); with ``store_executed=True``
the stored action is the one the environment received (after noise and clipping to the box).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


def make_vector_env(env_id: str, num_envs: int, **kwargs):
    """``num_envs`` copies of ``gymnasium.make(env_id, **kwargs)`` in a SyncVectorEnv (SAME_STEP autoreset)."""
    import gymnasium as gym

    if not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
    return gym.vector.SyncVectorEnv(
        [lambda: gym.make(env_id, **kwargs) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )


@dataclass
class Rollout:
    """T steps of N environments, all tensors on the CPU (see the module glossary for shapes)."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    next_obs: torch.Tensor

    @property
    def done(self) -> torch.Tensor:
        """Episode boundary after step t (terminated or truncated), (T, N) bool."""
        return self.terminated | self.truncated

    def cat(self, other: Rollout) -> Rollout:
        """Concatenate along time (same N)."""
        return Rollout(*(torch.cat([getattr(self, f), getattr(other, f)]) for f in self.__dataclass_fields__))

    def __getitem__(self, index) -> Rollout:
        """Slice along time."""
        return Rollout(*(getattr(self, f)[index] for f in self.__dataclass_fields__))


@dataclass
class RolloutCollector:
    """Runs ``policy`` in ``envs`` and returns :class:`Rollout` s; counts steps and episode returns.

    ``steps`` counts environment transitions summed over all N copies (the budget unit of the chapter).
    ``episodes`` lists ``(step, return)`` of every finished training episode (the learning curve).
    ``explore`` (optional) maps the policy's actions (N, act_dim) to the actions to execute and has a
    ``reset(done)`` method; ``store_executed`` stores the executed, clipped action instead of the
    policy's own (off-policy learners need the former; A2C's log-probabilities need the latter).
    """

    envs: object
    policy: torch.nn.Module
    seed: int = 0
    steps: int = 0
    episodes: list[tuple[int, float]] = field(default_factory=list)
    explore: object | None = None
    store_executed: bool = False

    def __post_init__(self) -> None:
        obs, _ = self.envs.reset(seed=self.seed)
        self.envs.action_space.seed(self.seed)
        self._obs = torch.as_tensor(obs, dtype=torch.float32)
        self._ep_return = np.zeros(self.envs.num_envs)
        space = self.envs.single_action_space
        self._box = (space.low, space.high) if hasattr(space, "low") else None

    def collect(self, n_steps: int) -> Rollout:
        """Step every environment ``n_steps`` times with actions sampled from the current policy."""
        if not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
        buf: dict[str, list] = {k: [] for k in Rollout.__dataclass_fields__}
        for _ in range(n_steps):
            a = self.policy.act(self._obs)  # (N,) or (N, act_dim)
            if self.explore is not None:
                a = self.explore(a)
            a_env = a.numpy() if self._box is None else np.clip(a.numpy(), *self._box)
            if self.store_executed:
                a = torch.as_tensor(a_env)
            obs, r, term, trunc, info = self.envs.step(a_env)
            next_obs = np.array(obs, dtype=np.float32, copy=True)
            if "_final_obs" in info:  # SAME_STEP: replace reset observations by the true final ones
                for i in np.flatnonzero(info["_final_obs"]):
                    next_obs[i] = info["final_obs"][i]
            for k, v in zip(buf, (self._obs, a, r, term, trunc, next_obs), strict=True):
                buf[k].append(torch.as_tensor(np.asarray(v)) if not torch.is_tensor(v) else v)
            self._ep_return += r
            self.steps += self.envs.num_envs
            for i in np.flatnonzero(term | trunc):
                self.episodes.append((self.steps, float(self._ep_return[i])))
                self._ep_return[i] = 0.0
            if self.explore is not None and (term | trunc).any():
                self.explore.reset(term | trunc)
            self._obs = torch.as_tensor(obs, dtype=torch.float32)
        out = {k: torch.stack(v) for k, v in buf.items()}
        return Rollout(
            obs=out["obs"].float(),
            actions=out["actions"],
            rewards=out["rewards"].float(),
            terminated=out["terminated"].bool(),
            truncated=out["truncated"].bool(),
            next_obs=out["next_obs"].float(),
        )
