"""Tests for lib/rl/ddpg.py and the DDPG parts of networks/rollout: targets, Polyak, bootstrapping, smoke runs."""

import copy
import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch

from lib.rl.ddpg import (
    DDPGConfig,
    TD3Config,
    actor_loss,
    q_overestimation,
    soft_update_,
    td_target,
    train_ddpg,
    train_td3,
)
from lib.rl.evaluate import evaluate
from lib.rl.networks import ContinuousQNet, DeterministicActor, mlp
from lib.rl.noise import GaussianNoise
from lib.rl.replay import ReplayBuffer, Transitions
from lib.rl.rollout import RolloutCollector, make_vector_env

TINY = dict(total_steps=300, learning_starts=100, hidden=16, batch_size=32, eval_every=150, eval_episodes=2)


def _batch(B=6, obs_dim=3, act_dim=1, terminated=None):
    g = torch.Generator().manual_seed(0)
    term = torch.zeros(B, dtype=torch.bool) if terminated is None else terminated
    return Transitions(torch.randn(B, obs_dim, generator=g), torch.rand(B, act_dim, generator=g) * 4 - 2,
                       torch.randn(B, generator=g), torch.randn(B, obs_dim, generator=g), term)  # fmt: skip


def test_soft_update_matches_the_polyak_formula():
    torch.manual_seed(0)
    source, target = ContinuousQNet(3, 1, 8), ContinuousQNet(3, 1, 8)
    before = [p.clone() for p in target.parameters()]
    soft_update_(target, source, 0.1)
    for t, b, s in zip(target.parameters(), before, source.parameters(), strict=True):
        torch.testing.assert_close(t, 0.1 * s + 0.9 * b)
    soft_update_(target, source, 1.0)  # tau = 1 copies
    assert all(torch.equal(t, s) for t, s in zip(target.parameters(), source.parameters(), strict=True))
    with pytest.raises(ValueError, match="tau"):
        soft_update_(target, source, 1.5)
    with pytest.raises(ValueError, match="shapes"):
        soft_update_(target, ContinuousQNet(3, 1, 4), 0.5)


def test_td_target_bootstraps_unless_terminated():
    torch.manual_seed(0)
    actor, critic = DeterministicActor(3, [-2.0], [2.0], 8), ContinuousQNet(3, 1, 8)
    term = torch.tensor([False, True, False, True, False, False])
    batch = _batch(terminated=term)
    cfg = DDPGConfig(gamma=0.9)
    y = td_target(batch, actor, [critic], cfg)
    with torch.no_grad():
        q_next = critic(batch.next_obs, actor(batch.next_obs))
    torch.testing.assert_close(y[term], batch.rewards[term])  # terminal: r only
    torch.testing.assert_close(y[~term], batch.rewards[~term] + 0.9 * q_next[~term])  # else r + gamma Q'(s', mu'(s'))


def test_td3_target_takes_the_min_of_two_critics_and_smooths_within_the_box():
    torch.manual_seed(1)
    actor, q1, q2 = DeterministicActor(3, [-2.0], [2.0], 8), ContinuousQNet(3, 1, 8), ContinuousQNet(3, 1, 8)
    batch = _batch()
    y = td_target(batch, actor, [q1, q2], DDPGConfig(gamma=0.5))
    with torch.no_grad():
        a = actor(batch.next_obs)
        expected = batch.rewards + 0.5 * torch.minimum(q1(batch.next_obs, a), q2(batch.next_obs, a))
    torch.testing.assert_close(y, expected)
    cfg = TD3Config(gamma=0.5, target_noise=0.2, target_noise_clip=0.5)
    y1 = td_target(batch, actor, [q1, q2], cfg, torch.Generator().manual_seed(0))
    y2 = td_target(batch, actor, [q1, q2], cfg, torch.Generator().manual_seed(0))
    assert torch.equal(y1, y2) and not torch.allclose(y1, y)  # noise changes the target, reproducibly


def test_collector_stores_truncation_as_non_terminal_and_the_executed_action():
    envs = make_vector_env("Pendulum-v1", 1, max_episode_steps=5)
    torch.manual_seed(0)
    actor = DeterministicActor(3, [-2.0], [2.0], 8)
    noise = GaussianNoise([-2.0], [2.0], 1, sigma=3.0, generator=torch.Generator().manual_seed(0))  # often clipped
    collector = RolloutCollector(envs, actor, seed=0, explore=noise, store_executed=True)
    ro = collector.collect(12)
    envs.close()
    assert ro.truncated[[4, 9], 0].all() and not ro.terminated.any()  # Pendulum only truncates
    assert ro.actions.abs().max() <= 2.0 and (ro.actions.abs() == 2.0).any()  # clipped, as executed
    buf = ReplayBuffer(100, 3, 1)
    buf.add_rollout(ro)
    assert not buf.terminated.any()  # so the TD target bootstraps through the time limit
    # and at the cut next_obs is the true last state, not the reset one
    assert not torch.allclose(ro.next_obs[4], ro.obs[5])
    # every stored next_obs, the cuts included, is Pendulum's successor of (obs, executed action)
    o, u = ro.obs[:, 0].double(), ro.actions[:, 0, 0].double()
    th = torch.atan2(o[:, 1], o[:, 0])
    thdot = (o[:, 2] + (3 * 10.0 / 2 * torch.sin(th) + 3.0 * u) * 0.05).clamp(-8, 8)
    expected = torch.stack([torch.cos(th + thdot * 0.05), torch.sin(th + thdot * 0.05), thdot], -1)
    torch.testing.assert_close(ro.next_obs[:, 0].double(), expected, atol=1e-5, rtol=0)


class _CountingEnv(gym.Env):
    """obs = steps taken in the episode; reward = 10 * episode + step; even episodes terminate after 3 steps,
    odd ones run until the TimeLimit of 5 steps truncates them."""

    observation_space = gym.spaces.Box(-100.0, 100.0, (1,))
    action_space = gym.spaces.Box(-1.0, 1.0, (1,))

    def __init__(self):
        self.episode, self.k = -1, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode, self.k = self.episode + 1, 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.k += 1
        term = self.episode % 2 == 0 and self.k == 3
        return np.full(1, self.k, np.float32), float(10 * self.episode + self.k), term, False, {}


def _register_counting_env() -> str:
    if "CountingTest-v0" not in gym.registry:
        gym.register("CountingTest-v0", entry_point=_CountingEnv, max_episode_steps=5)
    return "CountingTest-v0"


def test_bootstrap_through_truncation_but_not_termination_end_to_end():
    # collector -> buffer -> TD target on a task with both a true terminal state and a time-limit cut
    env_id = _register_counting_env()
    envs = make_vector_env(env_id, 1)
    torch.manual_seed(0)
    actor, critic = DeterministicActor(1, [-1.0], [1.0], 8), ContinuousQNet(1, 1, 8)
    ro = RolloutCollector(envs, actor, seed=0, store_executed=True).collect(8)  # 3 steps, terminal; 5, cut
    envs.close()
    assert ro.terminated[:, 0].nonzero().flatten().tolist() == [2] and ro.truncated[
        :, 0
    ].nonzero().flatten().tolist() == [7]
    buf = ReplayBuffer(16, 1, 1)
    buf.add_rollout(ro)
    batch = Transitions(buf.obs[:8], buf.actions[:8], buf.rewards[:8], buf.next_obs[:8], buf.terminated[:8])
    assert batch.next_obs[:, 0].tolist() == [1, 2, 3, 1, 2, 3, 4, 5]  # the true final states, not the resets
    y = td_target(batch, actor, [critic], DDPGConfig(gamma=0.9))
    with torch.no_grad():
        boot = batch.rewards + 0.9 * critic(batch.next_obs, actor(batch.next_obs))
    torch.testing.assert_close(y[2], batch.rewards[2])  # termination: r alone
    keep = torch.arange(8) != 2
    torch.testing.assert_close(y[keep], boot[keep])  # the cut at row 7 bootstraps like every other step
    assert (boot[7] - batch.rewards[7]).abs() > 1e-4  # (so the test would see a missing bootstrap)


def test_trainer_stores_termination_and_only_termination_as_terminal(monkeypatch):
    env_id = _register_counting_env()
    stored = []
    original = ReplayBuffer.add_rollout

    def spy(self, ro):
        stored.append(bool(ro.terminated.any()))
        original(self, ro)

    monkeypatch.setattr(ReplayBuffer, "add_rollout", spy)
    cfg = dict(env_id=env_id, total_steps=16, learning_starts=4, hidden=8, batch_size=4, eval_every=16, eval_episodes=1)
    train_ddpg(DDPGConfig(**cfg))  # episodes: 3 (terminal), 5 (cut), 3 (terminal), 5 (cut)
    assert [i for i, t in enumerate(stored) if t] == [2, 10]
    stored.clear()
    train_ddpg(DDPGConfig(**cfg, bootstrap_truncated=False))  # the bug: cuts at 7 and 15 stored as terminal too
    assert [i for i, t in enumerate(stored) if t] == [2, 7, 10, 15]


def test_truncation_as_termination_switch_marks_time_limits_terminal(monkeypatch):
    seen = []
    original = ReplayBuffer.add_rollout

    def spy(self, ro):
        seen.append(bool(ro.terminated.any()))
        original(self, ro)

    monkeypatch.setattr(ReplayBuffer, "add_rollout", spy)
    train_ddpg(DDPGConfig(**{**TINY, "total_steps": 200, "bootstrap_truncated": False}))
    assert sum(seen) == 1  # one 200-step Pendulum episode: its time limit stored as terminal
    seen.clear()
    train_ddpg(DDPGConfig(**{**TINY, "total_steps": 200}))
    assert sum(seen) == 0


def test_actor_loss_gradient_is_the_deterministic_policy_gradient():
    torch.manual_seed(0)
    actor, critic = DeterministicActor(3, [-2.0], [2.0], 8), ContinuousQNet(3, 1, 8)
    batch = _batch()
    actor_loss(batch, actor, critic).backward()
    got = [p.grad.clone() for p in actor.parameters()]
    # chain rule by hand: grad_theta mu(s) . grad_a Q(s, a) at a = mu(s), averaged
    a = actor(batch.obs).detach().requires_grad_(True)
    (dq_da,) = torch.autograd.grad(critic(batch.obs, a).sum(), a)
    actor.zero_grad()
    (-(actor(batch.obs) * dq_da).sum() / len(a)).backward()
    for g, p in zip(got, actor.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)


def test_train_ddpg_and_td3_smoke_and_determinism():
    r = train_ddpg(DDPGConfig(**TINY))
    assert r.eval_steps == [150, 300] and len(r.eval_returns) == 2 and r.steps == 300 and r.updates == 201
    assert len(r.critics) == 1 and np.isfinite(evaluate(r.policy, "Pendulum-v1", 2))
    r2 = train_ddpg(DDPGConfig(**TINY))
    assert r2.eval_returns == r.eval_returns  # same seed, same run
    t = train_td3(TD3Config(**TINY))
    assert len(t.critics) == 2 and t.updates == 201 and len(t.eval_returns) == 2
    o = train_ddpg(DDPGConfig(**{**TINY, "noise": "ou"}))
    assert o.eval_returns != r.eval_returns
    bias = q_overestimation(r.policy, r.critic, episodes=2, horizon=10, tail=20)
    assert set(bias) == {"q_mean", "return_mean", "bias", "relative_bias"}


def test_q_overestimation_of_a_critic_that_knows_the_answer():
    # a zero actor and a critic equal to the constant c: bias = c - mean return
    actor = DeterministicActor(3, [-2.0], [2.0], 8)
    torch.nn.init.zeros_(actor.f[-1].weight), torch.nn.init.zeros_(actor.f[-1].bias)
    critic = ContinuousQNet(3, 1, 8)
    torch.nn.init.zeros_(critic.q[-1].weight), torch.nn.init.constant_(critic.q[-1].bias, -5.0)
    out = q_overestimation(actor, critic, episodes=3, horizon=5, tail=50)
    assert out["q_mean"] == pytest.approx(-5.0) and out["bias"] == pytest.approx(-5.0 - out["return_mean"])


def test_ddpg_errors():
    with pytest.raises(TypeError, match="Box action space"):
        train_ddpg(DDPGConfig(env_id="CartPole-v1", **TINY))
    with pytest.raises(TypeError, match="DDPGConfig"):
        train_ddpg({"env_id": "Pendulum-v1"})
    with pytest.raises(TypeError, match="TD3Config"):
        train_td3(DDPGConfig())
    for kwargs, name in [({"tau": 0.0}, "tau"), ({"noise": "pink"}, "noise"), ({"policy_delay": 0}, "policy_delay"),
                         ({"gamma": 1.5}, "gamma"), ({"learning_starts": -1}, "learning_starts"),
                         ({"critic_lr": 0.0}, "critic_lr"), ({"target_noise": -0.1}, "target_noise")]:  # fmt: skip
        with pytest.raises(ValueError, match=name):
            DDPGConfig(**kwargs)
    assert dataclasses.replace(TD3Config(), seed=3).twin_critics


def test_networks_for_continuous_control():
    torch.manual_seed(0)
    actor = DeterministicActor(3, [-2.0, 0.0], [2.0, 1.0], 16)
    a = actor(torch.randn(1000, 3) * 100)  # saturate: still inside the box
    assert a.shape == (1000, 2) and (a[:, 0].abs() <= 2).all() and (a[:, 1] >= 0).all() and (a[:, 1] <= 1).all()
    assert torch.equal(actor.act(torch.zeros(1, 3), deterministic=False), actor.act(torch.zeros(1, 3)))
    moved = copy.deepcopy(actor).to(torch.float64)
    assert moved.scale.dtype == torch.float64  # bounds are buffers
    q = ContinuousQNet(3, 2, 16)
    assert q(torch.zeros(5, 3), torch.zeros(5, 2)).shape == (5,)
    with pytest.raises(ValueError, match="action"):
        q(torch.zeros(5, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="obs"):
        q(torch.zeros(5, 4), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="finite"):
        DeterministicActor(3, [-np.inf], [np.inf])
    with pytest.raises(ValueError, match="high > low"):
        DeterministicActor(3, [1.0], [-1.0])
    with pytest.raises(ValueError, match="activation"):
        mlp([2, 3], activation="gelu2")
    with pytest.raises(ValueError, match="init"):
        mlp([2, 3], init="xavier")
    relu = mlp([2, 8, 1], activation="relu", init="default", out_gain=0.0)
    assert isinstance(relu[1], torch.nn.ReLU) and relu[-1].weight.abs().sum() == 0
    tanh = mlp([2, 8, 1])  # the actor-critic chapter's default is unchanged: tanh, orthogonal, zero bias
    assert isinstance(tanh[1], torch.nn.Tanh) and tanh[0].bias.abs().sum() == 0
