"""DDPG and TD3: deterministic actor-critic, off-policy, with replay and target networks; one loop.

Chapter: "DDPG, the deterministic policy gradient" (``chapters/ddpg.ipynb``).
References: Silver et al. (2014) deterministic policy gradient; Lillicrap et al. (2016) DDPG;
Fujimoto et al. (2018) TD3 (clipped double Q, target policy smoothing, delayed policy updates).

The critic regresses Q_w(s, a) on the target

    y = r + gamma * (1 - terminated) * min_i Q'_i(s', clip(mu'(s') + eps, low, high))

(DDPG: one critic, eps = 0; TD3: two critics and eps = clip(N(0, sigma'^2), -c, c)), and the actor
ascends the deterministic policy gradient through the first critic,

    grad_theta J ~ mean_B[ grad_theta mu_theta(s) grad_a Q_w(s, a) |_{a = mu_theta(s)} ],

i.e. it minimises -mean Q_w(s, mu_theta(s)) (autograd applies the chain rule), every ``policy_delay``
critic updates. Targets follow their networks by Polyak averaging, w' <- tau w + (1 - tau) w'.

Glossary: mu_theta = ``actor``; Q_w = ``critics[0]`` (TD3: also ``critics[1]``); primes = ``*_targ``;
steps = environment transitions (one environment).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from lib.rl.evaluate import evaluate
from lib.rl.networks import ContinuousQNet, DeterministicActor
from lib.rl.noise import GaussianNoise, OUNoise
from lib.rl.replay import ReplayBuffer, Transitions
from lib.rl.rollout import RolloutCollector, make_vector_env
from lib.utils import seed_everything


@dataclass(frozen=True)
class DDPGConfig:
    """DDPG on a continuous-action task; the defaults are the chapter's Pendulum-v1 settings.

    TD3 is the same config with ``twin_critics``, ``target_noise`` and ``policy_delay`` set
    (:class:`TD3Config`); the chapter's ablation switches them on one at a time.
    """

    env_id: str = "Pendulum-v1"
    """Gymnasium environment id (flat Box observations and a bounded Box action space)."""
    total_steps: int = 15_000
    """Budget of environment transitions."""
    seed: int = 0
    """Seeds torch, numpy, the environment and the noise."""
    gamma: float = 0.98
    """Discount factor."""
    hidden: int = 128
    """Width of the two hidden ReLU layers of the actor and of each critic."""
    actor_lr: float = 1e-3
    """Adam learning rate of the actor."""
    critic_lr: float = 1e-3
    """Adam learning rate of the critic(s)."""
    batch_size: int = 128
    """Transitions per minibatch."""
    buffer_size: int = 100_000
    """Replay capacity (larger than the budget: nothing is forgotten on Pendulum)."""
    learning_starts: int = 1_000
    """Uniform random actions for this many steps before the first update (the warm-up)."""
    tau: float = 0.005
    """Polyak coefficient of the target networks."""
    noise: str = "gaussian"
    """Exploration noise: "gaussian" or "ou"."""
    noise_sigma: float = 0.1
    """sigma of the exploration noise, in units of the action half-range."""
    ou_theta: float = 0.15
    """theta of the OU noise (dt = 1)."""
    twin_critics: bool = False
    """TD3's clipped double Q: two critics, the target uses their minimum."""
    target_noise: float = 0.0
    """TD3's target policy smoothing: sigma' of the noise on mu'(s') (half-range units; 0 = off)."""
    target_noise_clip: float = 0.5
    """c, the clip of the smoothing noise (half-range units)."""
    policy_delay: int = 1
    """Update the actor and the targets once every this many critic updates (TD3: 2)."""
    bootstrap_truncated: bool = True
    """Bootstrap through time-limit truncations (correct); False treats them as terminal (the bug)."""
    eval_every: int = 2_500
    """Evaluate the greedy policy every this many environment steps."""
    eval_episodes: int = 20
    """Episodes per evaluation."""
    eval_bias_episodes: int = 0
    """At each evaluation also measure the critic's overestimation (:func:`q_overestimation`) on this
    many greedy episodes (0: off)."""
    threads: int = 1
    """torch threads (small networks run fastest on one)."""

    def __post_init__(self) -> None:
        for name in ("total_steps", "hidden", "batch_size", "buffer_size", "policy_delay", "eval_every",
                     "eval_episodes", "threads"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.eval_bias_episodes, int) or self.eval_bias_episodes < 0:
            raise ValueError(f"eval_bias_episodes must be a non-negative int, got {self.eval_bias_episodes!r}")
        if not isinstance(self.learning_starts, int) or self.learning_starts < 0:
            raise ValueError(f"learning_starts must be a non-negative int, got {self.learning_starts!r}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma!r}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau!r}")
        for name in ("actor_lr", "critic_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.noise not in ("gaussian", "ou"):
            raise ValueError(f"noise must be 'gaussian' or 'ou', got {self.noise!r}")
        for name in ("noise_sigma", "target_noise", "target_noise_clip"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class TD3Config(DDPGConfig):
    """TD3: DDPG with clipped double Q, target policy smoothing and delayed policy updates."""

    twin_critics: bool = True
    target_noise: float = 0.2
    policy_delay: int = 2


@dataclass
class DDPGResult:
    """What :func:`train_ddpg` returns: the networks, the learning curve and the counters."""

    policy: DeterministicActor
    """The actor mu_theta (``act`` works with :func:`lib.rl.evaluate.evaluate`)."""
    critics: list[ContinuousQNet]
    """Q_w (and Q_w2 for TD3)."""
    config: DDPGConfig
    eval_steps: list[int] = field(default_factory=list)
    """Environment steps at each evaluation."""
    eval_returns: list[float] = field(default_factory=list)
    """Mean greedy return of each evaluation."""
    eval_bias: list[dict[str, float]] = field(default_factory=list)
    """:func:`q_overestimation` of Q_w at each evaluation (if ``eval_bias_episodes``)."""
    episodes: list[tuple[int, float]] = field(default_factory=list)
    """(step, return) of every finished training episode (with exploration noise)."""
    steps: int = 0
    """Environment steps used."""
    updates: int = 0
    """Critic gradient steps taken."""
    seconds: float = 0.0
    """Wall time of training, evaluations included."""
    cpu_seconds: float = 0.0
    """CPU time of the process over the same span (a fairer figure than wall time on a shared machine)."""

    @property
    def critic(self) -> ContinuousQNet:
        """The first critic, Q_w."""
        return self.critics[0]


# ----------------------------------------------------------------------------- ALGO LOGIC
@torch.no_grad()
def soft_update_(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging in place: w' <- tau w + (1 - tau) w' for every parameter (buffers are copied)."""
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau!r}")
    t_params, s_params = list(target.parameters()), list(source.parameters())
    if len(t_params) != len(s_params) or any(t.shape != s.shape for t, s in zip(t_params, s_params, strict=True)):
        raise ValueError("target and source must have the same parameter shapes")
    for t, s in zip(t_params, s_params, strict=True):
        t.lerp_(s, tau)
    for t, s in zip(target.buffers(), source.buffers(), strict=True):
        t.copy_(s)


@torch.no_grad()
def td_target(batch: Transitions, actor_targ: DeterministicActor, critics_targ: list[ContinuousQNet],
              cfg: DDPGConfig, generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """y = r + gamma (1 - terminated) min_i Q'_i(s', a'), a' = mu'(s') (+ clipped noise for TD3); (B,)."""
    a_next = actor_targ(batch.next_obs)  # (B, act_dim)
    if cfg.target_noise > 0:  # target policy smoothing
        eps = torch.randn(a_next.shape, generator=generator) * cfg.target_noise
        eps = eps.clamp(-cfg.target_noise_clip, cfg.target_noise_clip) * actor_targ.scale
        low, high = actor_targ.shift - actor_targ.scale, actor_targ.shift + actor_targ.scale
        a_next = torch.maximum(torch.minimum(a_next + eps, high), low)
    q_next = torch.stack([q(batch.next_obs, a_next) for q in critics_targ]).min(0).values  # (B,)
    return batch.rewards + cfg.gamma * (~batch.terminated).float() * q_next


def critic_loss(batch: Transitions, critics: list[ContinuousQNet], y: torch.Tensor) -> torch.Tensor:
    """Sum over critics of mean (Q_i(s, a) - y)^2."""
    return sum((q(batch.obs, batch.actions) - y).pow(2).mean() for q in critics)


def actor_loss(batch: Transitions, actor: DeterministicActor, critic: ContinuousQNet) -> torch.Tensor:
    """-mean Q_w(s, mu_theta(s)); its gradient in theta is minus the sampled deterministic policy gradient."""
    return -critic(batch.obs, actor(batch.obs)).mean()


# ----------------------------------------------------------------------------- shared plumbing
def make_noise(cfg: DDPGConfig, low, high, generator: torch.Generator):
    """The exploration hook of ``cfg`` (Gaussian or OU, with ``learning_starts`` uniform warm-up steps)."""
    if cfg.noise == "ou":
        return OUNoise(low, high, 1, cfg.ou_theta, cfg.noise_sigma, 1.0, cfg.learning_starts, generator)
    return GaussianNoise(low, high, 1, cfg.noise_sigma, cfg.learning_starts, generator)


def train_ddpg(config: DDPGConfig) -> DDPGResult:
    """Train DDPG (or TD3, with a :class:`TD3Config`); returns the actor, the critics and the curve.

    Raises ``TypeError`` for a non-Box (e.g. Discrete) action space: a deterministic actor needs
    continuous actions to differentiate Q through.
    """
    from gymnasium import spaces

    if not isinstance(config, DDPGConfig):
        raise TypeError(f"config must be a DDPGConfig, got {type(config).__name__}")
    cfg = config
    gen = seed_everything(cfg.seed, threads=cfg.threads)
    envs = make_vector_env(cfg.env_id, 1)
    space, obs_space = envs.single_action_space, envs.single_observation_space
    if not isinstance(space, spaces.Box) or len(space.shape) != 1:
        envs.close()
        raise TypeError(f"DDPG needs a flat Box action space (continuous actions), got {space!r}")
    obs_dim, act_dim = int(obs_space.shape[0]), int(space.shape[0])
    actor = DeterministicActor(obs_dim, space.low, space.high, cfg.hidden)
    critics = [ContinuousQNet(obs_dim, act_dim, cfg.hidden) for _ in range(2 if cfg.twin_critics else 1)]
    actor_targ, critics_targ = copy.deepcopy(actor), [copy.deepcopy(q) for q in critics]
    for net in (actor_targ, *critics_targ):
        net.requires_grad_(False)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=cfg.actor_lr, foreach=True)
    critic_opt = torch.optim.Adam([p for q in critics for p in q.parameters()], lr=cfg.critic_lr, foreach=True)
    buffer = ReplayBuffer(cfg.buffer_size, obs_dim, act_dim)
    noise = make_noise(cfg, space.low, space.high, gen)
    collector = RolloutCollector(envs, actor, seed=cfg.seed, explore=noise, store_executed=True)
    result = DDPGResult(actor, critics, cfg, episodes=collector.episodes)
    t0, c0, next_eval = time.perf_counter(), time.process_time(), cfg.eval_every
    while collector.steps < cfg.total_steps:
        ro = collector.collect(1)
        if not cfg.bootstrap_truncated:  # the bug, for the chapter's ablation: a time limit as a terminal state
            ro.terminated = ro.terminated | ro.truncated
        buffer.add_rollout(ro)
        if collector.steps >= cfg.learning_starts:
            batch = buffer.sample(cfg.batch_size, gen)
            y = td_target(batch, actor_targ, critics_targ, cfg, gen)
            loss = critic_loss(batch, critics, y)
            critic_opt.zero_grad(set_to_none=True)
            loss.backward()
            critic_opt.step()
            result.updates += 1
            if result.updates % cfg.policy_delay == 0:
                loss = actor_loss(batch, actor, critics[0])
                actor_opt.zero_grad(set_to_none=True)
                loss.backward(inputs=list(actor.parameters()))  # the critic's weights get no gradient here
                actor_opt.step()
                soft_update_(actor_targ, actor, cfg.tau)
                for q_targ, q in zip(critics_targ, critics, strict=True):
                    soft_update_(q_targ, q, cfg.tau)
        if collector.steps >= next_eval or collector.steps >= cfg.total_steps:
            next_eval += cfg.eval_every
            result.eval_steps.append(collector.steps)
            result.eval_returns.append(evaluate(actor, cfg.env_id, cfg.eval_episodes, seed=10_000 + cfg.seed))
            if cfg.eval_bias_episodes:
                bias = q_overestimation(
                    actor, critics[0], cfg.env_id, cfg.gamma, cfg.eval_bias_episodes, seed=20_000 + cfg.seed
                )
                result.eval_bias.append(bias)
    envs.close()
    result.steps, result.seconds = collector.steps, time.perf_counter() - t0
    result.cpu_seconds = time.process_time() - c0
    return result


def train_td3(config: TD3Config) -> DDPGResult:
    """Train TD3 (the same loop as :func:`train_ddpg`; ``config`` must be a :class:`TD3Config`)."""
    if not isinstance(config, TD3Config):
        raise TypeError(f"config must be a TD3Config, got {type(config).__name__}")
    return train_ddpg(config)


def q_overestimation(actor: DeterministicActor, critic: ContinuousQNet, env_id: str = "Pendulum-v1",
                     gamma: float = 0.98, episodes: int = 10, horizon: int = 200, tail: int = 400,
                     seed: int = 0) -> dict[str, float]:  # fmt: skip
    """Critic's estimate vs the true discounted return of the greedy policy, at the states it visits.

    Plays ``episodes`` greedy episodes of ``horizon + tail`` steps (the time limit is lifted) and, at each
    of the first ``horizon`` states, compares Q_w(s_t, mu(s_t)) with the Monte-Carlo return
    G_t = sum_k gamma^k r_{t+k} over the remaining steps (at least ``tail``, so the neglected rest is
    below gamma^tail max|r| / (1 - gamma)). Returns the mean estimate, the mean return and their gap.
    """
    import gymnasium as gym

    if not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be a positive int, got {episodes!r}")
    if not isinstance(horizon, int) or horizon < 1 or not isinstance(tail, int) or tail < 0:
        raise ValueError(f"horizon must be a positive int and tail a non-negative int, got {horizon!r}, {tail!r}")
    T = horizon + tail
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(env_id, max_episode_steps=T) for _ in range(episodes)])
    try:
        obs, _ = envs.reset(seed=seed)
        states, rewards = [], []
        for _ in range(T):
            o = torch.as_tensor(obs, dtype=torch.float32)
            states.append(o)
            obs, r, term, trunc, _ = envs.step(actor.act(o).numpy())
            if term.any():
                raise ValueError(f"{env_id} terminated: q_overestimation needs a task that never terminates")
            rewards.append(r)
    finally:
        envs.close()
    r = np.stack(rewards)  # (T, episodes)
    G = np.zeros_like(r)
    acc = np.zeros(episodes)
    for t in range(T - 1, -1, -1):
        acc = r[t] + gamma * acc
        G[t] = acc
    s = torch.stack(states[:horizon]).flatten(0, 1)  # (horizon * episodes, obs_dim)
    with torch.no_grad():
        q = critic(s, actor(s)).numpy()
    g = G[:horizon].reshape(-1)
    return {"q_mean": float(q.mean()), "return_mean": float(g.mean()), "bias": float((q - g).mean()),
            "relative_bias": float((q - g).mean() / np.abs(g).mean())}  # fmt: skip
