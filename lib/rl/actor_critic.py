"""REINFORCE with a baseline, QAC and A2C: one on-policy loop, three ways to weight grad log pi.

Chapter: "Actor-critic, from the policy gradient theorem to A2C".
References: Williams (1992) REINFORCE; Sutton et al. (2000) policy gradient theorem; Konda & Tsitsiklis
(2000) actor-critic; Mnih et al. (2016) A3C (A2C is its synchronous variant); Schulman et al. (2016) GAE.

All three methods minimise, over a batch of visited (s_t, a_t),

    L = -mean[ log pi_theta(a_t|s_t) * Psi_t ] + vf_coef * L_critic - ent_coef * mean[ H(pi_theta(.|s_t)) ]

and differ only in Psi_t and in what the critic learns (the ALGO LOGIC functions below):

    REINFORCE + baseline  Psi_t = G_t - V_w(s_t)       G_t: Monte Carlo return of the whole episode
    QAC                   Psi_t = Q_w(s_t, a_t)        Q_w learnt by expected-SARSA TD(0)
    A2C                   Psi_t = A_t (GAE)            V_w learnt on the lambda-return, bootstraps

QACConfig's options give the chapter's "QAC + baseline" (Psi_t = Q_w - V_Q, V_Q = sum_a pi Q_w) and its
ablations (a lambda-return critic, a slower actor, A2C's GAE weight on QAC's critic).

Glossary: Psi_t = ``psi``; V_w = ``critic`` (ValueNet) or Q_w (QNet); steps = environment transitions
summed over the N parallel environments.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from lib.rl.evaluate import evaluate
from lib.rl.networks import CategoricalPolicy, QNet, ValueNet, make_policy
from lib.rl.returns import episode_returns, gae
from lib.rl.rollout import Rollout, RolloutCollector, make_vector_env
from lib.utils import seed_everything


@dataclass(frozen=True)
class OnPolicyConfig:
    """Fields shared by the three trainers (each has its own subclass with its defaults)."""

    env_id: str = "CartPole-v1"
    """Gymnasium environment id (flat Box observations; Discrete or Box actions)."""
    total_steps: int = 100_000
    """Budget of environment transitions, summed over the parallel environments."""
    num_envs: int = 8
    """N, synchronous parallel copies of the environment."""
    n_steps: int = 16
    """T, steps per environment in each rollout (one update per rollout for A2C and QAC)."""
    gamma: float = 0.99
    """Discount factor."""
    lr: float = 1e-3
    """Adam learning rate (actor and critic share one optimiser)."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus."""
    vf_coef: float = 0.5
    """Weight of the critic loss."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""
    hidden: int = 64
    """Width of the two hidden tanh layers of every network."""
    normalize_advantages: bool = True
    """Standardise Psi over the batch (mean 0, std 1)."""
    seed: int = 0
    """Seeds torch, numpy and the environments."""
    eval_every: int = 5_000
    """Evaluate the greedy policy every this many environment steps."""
    eval_episodes: int = 20
    """Episodes per evaluation."""
    target_return: float | None = None
    """Stop training at the first evaluation whose mean return reaches this (None: never)."""
    anneal_lr: bool = False
    """Decay the learning rate linearly to 0 over ``total_steps``."""
    threads: int = 1
    """torch threads (small networks run fastest on one)."""

    def __post_init__(self) -> None:
        for name in ("total_steps", "num_envs", "n_steps", "hidden", "eval_every", "eval_episodes", "threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")


@dataclass(frozen=True)
class A2CConfig(OnPolicyConfig):
    """Advantage actor-critic (synchronous A3C) with GAE(lambda)."""

    gae_lambda: float = 0.95
    """lambda of GAE: 0 = one-step TD error, 1 = n-step return to the end of the rollout."""
    anneal_lr: bool = True
    """On by default for A2C: a constant rate lets the solved policy drift away again (chapter study)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(f"gae_lambda must be in [0, 1], got {self.gae_lambda!r}")


@dataclass(frozen=True)
class QACConfig(OnPolicyConfig):
    """Q actor-critic: the actor follows grad log pi * Q_w(s, a), Q_w learnt by TD(0)."""

    normalize_advantages: bool = False
    """Off by default: standardising Q_w would subtract a batch-mean baseline (that is no longer QAC)."""
    baseline: bool = False
    """Psi_t = Q_w(s_t, a_t) - sum_a pi(a|s_t) Q_w(s_t, a), an advantage estimate ("QAC + baseline")."""
    critic_lambda: float = 0.0
    """lambda of the critic's target: 0 = expected-SARSA TD(0) (QAC proper); > 0 = the lambda-return
    r_{t+1} + gamma ((1 - lambda) V_Q(s_{t+1}) + lambda G^lambda_{t+1}) of the rollout, V_Q = sum_a pi Q_w."""

    actor_lambda: float | None = None
    """None: Psi_t comes from Q_w (QAC). A float: Psi_t = GAE(actor_lambda) of the rewards with V_Q
    (A2C's weight on QAC's critic; an ablation)."""
    actor_lr_scale: float = 1.0
    """The actor's learning rate is ``lr * actor_lr_scale`` (< 1: a slower actor, two time scales)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.critic_lambda <= 1.0:
            raise ValueError(f"critic_lambda must be in [0, 1], got {self.critic_lambda!r}")
        if self.actor_lambda is not None and not 0.0 <= self.actor_lambda <= 1.0:
            raise ValueError(f"actor_lambda must be None or in [0, 1], got {self.actor_lambda!r}")
        if self.actor_lr_scale <= 0:
            raise ValueError(f"actor_lr_scale must be > 0, got {self.actor_lr_scale!r}")


@dataclass(frozen=True)
class ReinforceConfig(OnPolicyConfig):
    """REINFORCE with a learnt state-value baseline (no bootstrapping except at time-limit cuts)."""

    episodes_per_update: int | None = None
    """Update once this many episodes have finished since the last update (None: num_envs)."""


@dataclass
class TrainResult:
    """What a trainer returns: the trained networks and the learning curves."""

    policy: nn.Module
    critic: nn.Module
    config: OnPolicyConfig
    eval_steps: list[int] = field(default_factory=list)
    """Environment steps at each evaluation."""
    eval_returns: list[float] = field(default_factory=list)
    """Mean greedy return of each evaluation."""
    eval_entropy: list[float | None] = field(default_factory=list)
    """Mean entropy of pi(.|s) over the states of the latest batch, at each evaluation (nats; None
    before the first update)."""
    episodes: list[tuple[int, float]] = field(default_factory=list)
    """(step, return) of every finished training episode (stochastic policy)."""
    steps: int = 0
    """Environment steps used (summed over environments)."""
    updates: int = 0
    """Gradient steps taken."""
    solved_at: int | None = None
    """Steps at the first evaluation reaching ``config.target_return`` (None if never or no target)."""
    seconds: float = 0.0
    """Wall time of training, evaluations included."""
    stale_fraction: float | None = None
    """REINFORCE only: fraction of the steps in its updates that an older policy sampled (see
    :func:`reinforce_batch`); None for the methods that update on fresh rollouts only."""


@dataclass
class Batch:
    """Flattened valid steps of a rollout: obs (B, obs_dim), actions (B,) or (B, act_dim), psi (B,)."""

    obs: torch.Tensor
    actions: torch.Tensor
    psi: torch.Tensor
    critic_loss: torch.Tensor


# ----------------------------------------------------------------------------- ALGO LOGIC
def a2c_batch(ro: Rollout, policy: nn.Module, critic: nn.Module, cfg: A2CConfig, state: dict) -> Batch:
    """A2C: Psi_t = GAE A_t; the critic regresses V_w(s_t) on the lambda-return A_t + V_w(s_t)."""
    V = critic(ro.obs)  # (T, N)
    with torch.no_grad():
        V_next = critic(ro.next_obs)  # (T, N), true next states (final obs at episode ends)
    A = gae(ro.rewards, V.detach(), V_next, ro.terminated, ro.truncated, cfg.gamma, cfg.gae_lambda)
    critic_loss = (V - (A + V.detach())).pow(2).mean()
    return Batch(ro.obs.flatten(0, 1), ro.actions.flatten(0, 1), A.flatten(), critic_loss)


def qac_batch(ro: Rollout, policy: nn.Module, critic: nn.Module, cfg: QACConfig, state: dict) -> Batch:
    """QAC: Psi_t = Q_w(s_t, a_t); Q_w regresses on r + gamma sum_a' pi(a'|s') Q_w(s', a') (expected SARSA).

    ``cfg.baseline`` subtracts V_Q(s_t) = sum_a pi(a|s_t) Q_w(s_t, a) from Psi_t; ``cfg.critic_lambda > 0``
    replaces the TD(0) target by the lambda-return (the ablation of the chapter's "critic lag").
    """
    Q = critic(ro.obs)  # (T, N, A)
    q_sa = Q.gather(-1, ro.actions.unsqueeze(-1)).squeeze(-1)  # (T, N)
    with torch.no_grad():
        V_Q = (policy(ro.obs).probs * Q).sum(-1)  # (T, N), V_Q(s_t) = sum_a pi(a|s_t) Q_w(s_t, a)
        V_next = (policy(ro.next_obs).probs * critic(ro.next_obs)).sum(-1)  # (T, N)
        # lambda = 0: A + V_Q = r + gamma (1 - terminated) V_next, the expected-SARSA target
        target = gae(ro.rewards, V_Q, V_next, ro.terminated, ro.truncated, cfg.gamma, cfg.critic_lambda) + V_Q
    critic_loss = (q_sa - target).pow(2).mean()
    if cfg.actor_lambda is not None:  # A2C's Psi with V_Q as the state value
        with torch.no_grad():
            psi = gae(ro.rewards, V_Q, V_next, ro.terminated, ro.truncated, cfg.gamma, cfg.actor_lambda)
    else:
        psi = q_sa.detach() - V_Q if cfg.baseline else q_sa.detach()
    return Batch(ro.obs.flatten(0, 1), ro.actions.flatten(0, 1), psi.flatten(), critic_loss)


def reinforce_batch(ro: Rollout, policy: nn.Module, critic: nn.Module, cfg: ReinforceConfig, state: dict):
    """REINFORCE + baseline: Psi_t = G_t - V_w(s_t) on finished episodes; None until enough have finished.

    Steps of episodes still running at the end of a rollout wait in ``state`` for the next rollouts.
    An episode that spans an update therefore enters the next update with steps sampled by an older
    policy (one or more updates old): those terms are off-policy (their importance ratio pi_new / pi_old
    is not 1, and we do not correct it). ``state["stale_steps"] / state["steps_used"]`` counts how many (the chapter
    reports the fraction); dropping them instead would bias the updates towards short episodes.
    """
    n_updates = state.get("n_updates", 0)
    born = torch.full(ro.done.shape, n_updates)  # (T, N), updates made before these steps were sampled
    if "pending" in state:
        ro, used = state["pending"].cat(ro), torch.cat([state["used"], torch.zeros_like(ro.done)])
        born = torch.cat([state["born"], born])
    else:
        used = torch.zeros_like(ro.done)
    with torch.no_grad():
        V_next = critic(ro.next_obs)  # used only where an episode was truncated
    G, complete = episode_returns(ro.rewards, V_next, ro.terminated, ro.truncated, cfg.gamma)
    valid = complete & ~used  # (T, N)
    need = cfg.episodes_per_update or cfg.num_envs
    if int((ro.done & valid).sum()) < need:
        state["pending"], state["used"], state["born"] = ro, used, born
        return None
    state["n_updates"] = n_updates + 1
    state["steps_used"] = state.get("steps_used", 0) + int(valid.sum())
    state["stale_steps"] = state.get("stale_steps", 0) + int((valid & (born < n_updates)).sum())
    used = used | valid
    first = int((~used).any(1).int().argmax()) if (~used).any() else ro.done.shape[0]
    state["pending"], state["used"], state["born"] = ro[first:], used[first:], born[first:]  # unfinished only
    V = critic(ro.obs[valid])  # (B,)
    critic_loss = (V - G[valid]).pow(2).mean()
    return Batch(ro.obs[valid], ro.actions[valid], G[valid] - V.detach(), critic_loss)


# ----------------------------------------------------------------------------- shared plumbing
def policy_gradient_loss(policy: nn.Module, batch: Batch, cfg: OnPolicyConfig) -> torch.Tensor:
    """-mean(log pi(a|s) Psi) + vf_coef L_critic - ent_coef mean H(pi(.|s)), Psi standardised if asked."""
    psi = batch.psi
    if cfg.normalize_advantages and psi.numel() > 1:
        psi = (psi - psi.mean()) / (psi.std() + 1e-8)
    dist = policy(batch.obs)
    actor_loss = -(dist.log_prob(batch.actions) * psi).mean()
    return actor_loss + cfg.vf_coef * batch.critic_loss - cfg.ent_coef * dist.entropy().mean()


def _train(cfg: OnPolicyConfig, make_batch: Callable, critic_kind: str) -> TrainResult:
    seed_everything(cfg.seed, threads=cfg.threads)
    envs = make_vector_env(cfg.env_id, cfg.num_envs)
    policy = make_policy(envs.single_observation_space, envs.single_action_space, cfg.hidden)
    obs_dim = policy.obs_dim
    if critic_kind == "q":
        if not isinstance(policy, CategoricalPolicy):
            raise TypeError(f"QAC needs a Discrete action space, got {envs.single_action_space!r}")
        critic: nn.Module = QNet(obs_dim, policy.n_actions, cfg.hidden)
    else:
        critic = ValueNet(obs_dim, cfg.hidden)
    params = list(policy.parameters()) + list(critic.parameters())
    scale = getattr(cfg, "actor_lr_scale", 1.0)  # QAC's two-time-scale option
    groups = [
        {"params": list(policy.parameters()), "scale": scale},
        {"params": list(critic.parameters()), "scale": 1.0},
    ]
    for group in groups:
        group["lr"] = cfg.lr * group["scale"]
    optimizer = torch.optim.Adam(groups, lr=cfg.lr, eps=1e-5)
    collector = RolloutCollector(envs, policy, seed=cfg.seed)
    result = TrainResult(policy, critic, cfg, episodes=collector.episodes)
    state: dict = {}
    last_obs = None
    t0, next_eval = time.perf_counter(), cfg.eval_every
    while collector.steps < cfg.total_steps:
        remaining = -(-(cfg.total_steps - collector.steps) // cfg.num_envs)  # ceil
        batch = make_batch(collector.collect(min(cfg.n_steps, remaining)), policy, critic, cfg, state)
        if batch is not None:
            if cfg.anneal_lr:
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * group["scale"] * max(0.0, 1.0 - collector.steps / cfg.total_steps)
            loss = policy_gradient_loss(policy, batch, cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            result.updates += 1
            last_obs = batch.obs
        if collector.steps >= next_eval or collector.steps >= cfg.total_steps:
            next_eval += cfg.eval_every
            result.eval_steps.append(collector.steps)
            result.eval_returns.append(evaluate(policy, cfg.env_id, cfg.eval_episodes, seed=10_000 + cfg.seed))
            if last_obs is not None:
                with torch.no_grad():
                    result.eval_entropy.append(float(policy(last_obs).entropy().mean()))
            else:
                result.eval_entropy.append(None)
            if cfg.target_return is not None and result.eval_returns[-1] >= cfg.target_return:
                result.solved_at = collector.steps
                break
    envs.close()
    result.steps, result.seconds = collector.steps, time.perf_counter() - t0
    if state.get("steps_used"):
        result.stale_fraction = state["stale_steps"] / state["steps_used"]
    return result


def _checked(config, cls):
    if not isinstance(config, cls):
        raise TypeError(f"config must be a {cls.__name__}, got {type(config).__name__}")
    return config


def train_a2c(config: A2CConfig) -> TrainResult:
    """Train A2C (see the module docstring); returns the policy, the critic V_w and the curves."""
    return _train(_checked(config, A2CConfig), a2c_batch, "v")


def train_qac(config: QACConfig) -> TrainResult:
    """Train QAC (discrete actions only); returns the policy, the critic Q_w and the curves."""
    return _train(_checked(config, QACConfig), qac_batch, "q")


def train_reinforce(config: ReinforceConfig) -> TrainResult:
    """Train REINFORCE with a learnt baseline; returns the policy, the baseline V_w and the curves."""
    return _train(_checked(config, ReinforceConfig), reinforce_batch, "v")
