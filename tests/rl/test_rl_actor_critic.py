"""Tests for lib/rl/{networks,rollout,evaluate,actor_critic}.py: rollouts, errors and trainer smoke runs."""

import numpy as np
import pytest
import torch

from lib.rl.actor_critic import (
    A2CConfig,
    QACConfig,
    ReinforceConfig,
    train_a2c,
    train_qac,
    train_reinforce,
)
from lib.rl.evaluate import episode_frames, evaluate, evaluate_returns
from lib.rl.networks import CategoricalPolicy, GaussianPolicy, make_policy
from lib.rl.rollout import RolloutCollector, make_vector_env


def test_rollout_next_obs_and_truncation():
    # a 5-step time limit: CartPole under a random policy is truncated (not terminated) at step 5
    envs = make_vector_env("CartPole-v1", 2, max_episode_steps=5)
    torch.manual_seed(0)
    collector = RolloutCollector(envs, CategoricalPolicy(4, 2), seed=0)
    ro = collector.collect(8)
    assert ro.obs.shape == (8, 2, 4) and ro.actions.shape == (8, 2) and ro.rewards.dtype == torch.float32
    assert ro.truncated[4].all() and not ro.terminated.any() and not ro.truncated[:4].any()
    for t in range(7):
        for i in range(2):
            if not ro.done[t, i]:  # inside an episode the next state is the next stored state
                torch.testing.assert_close(ro.next_obs[t, i], ro.obs[t + 1, i])
    # at the cut, next_obs is the true final observation, not the reset one stored at t + 1
    assert not torch.allclose(ro.next_obs[4], ro.obs[5])
    assert collector.steps == 16 and [s for s, _ in collector.episodes] == [10, 10]
    envs.close()


def test_evaluate_matches_a_manual_loop():
    import gymnasium as gym

    class AlwaysLeft(CategoricalPolicy):
        def act(self, obs, deterministic=False):
            return torch.zeros(obs.shape[0], dtype=torch.long)

    returns = evaluate_returns(AlwaysLeft(4, 2), "CartPole-v1", episodes=3, seed=5)
    for k in range(3):
        env = gym.make("CartPole-v1")
        env.reset(seed=5 + k)
        total, done = 0.0, False
        while not done:
            _, r, term, trunc, _ = env.step(0)
            total, done = total + r, term or trunc
        assert returns[k] == total
    assert evaluate(AlwaysLeft(4, 2), "CartPole-v1", 3, 5) == pytest.approx(returns.mean())


def test_policies_and_errors():
    from gymnasium import spaces

    box = spaces.Box(-1.0, 1.0, (3,), np.float32)
    assert isinstance(make_policy(box, spaces.Discrete(4)), CategoricalPolicy)
    pol = make_policy(box, spaces.Box(-2.0, 2.0, (2,), np.float32))
    assert isinstance(pol, GaussianPolicy) and pol.act(torch.zeros(5, 3)).shape == (5, 2)
    with pytest.raises(TypeError, match="action_space"):
        make_policy(box, spaces.MultiDiscrete([2, 3]))
    with pytest.raises(ValueError, match="observation_space"):
        make_policy(spaces.Discrete(3), spaces.Discrete(2))
    with pytest.raises(ValueError, match="obs"):
        pol(torch.zeros(5, 4))
    with pytest.raises(ValueError, match="episodes"):
        evaluate(pol, "Pendulum-v1", 0, 0)


@pytest.mark.parametrize(
    "train, config",
    [
        (train_a2c, A2CConfig(total_steps=400, eval_every=200, eval_episodes=2)),
        (train_qac, QACConfig(total_steps=400, eval_every=200, eval_episodes=2)),
        (train_reinforce, ReinforceConfig(total_steps=400, eval_every=200, eval_episodes=2, episodes_per_update=2)),
        (train_a2c, A2CConfig(env_id="Pendulum-v1", total_steps=256, num_envs=2, eval_every=256, eval_episodes=1)),
    ],
)
def test_trainers_smoke(train, config):
    result = train(config)
    assert result.steps == config.total_steps and result.updates >= 1
    assert len(result.eval_returns) == len(result.eval_steps) >= 1
    assert all(np.isfinite(result.eval_returns))
    assert all(torch.isfinite(p).all() for p in result.policy.parameters())


def test_trainer_errors():
    with pytest.raises(TypeError, match="QAC needs a Discrete"):
        train_qac(QACConfig(env_id="Pendulum-v1", total_steps=64))
    with pytest.raises(TypeError, match="config"):
        train_a2c(QACConfig(total_steps=64))
    with pytest.raises(ValueError, match="num_envs"):
        A2CConfig(num_envs=0)
    with pytest.raises(ValueError, match="gamma"):
        A2CConfig(gamma=1.5)


def test_reproducible_and_frames():
    cfg = A2CConfig(total_steps=256, eval_every=256, eval_episodes=2, seed=3)
    a, b = train_a2c(cfg), train_a2c(cfg)
    for p, q in zip(a.policy.parameters(), b.policy.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert a.episodes == b.episodes
    frames = episode_frames(a.policy, "CartPole-v1", seed=0, every=4, max_frames=3)
    assert len(frames) == 3 and frames[0].shape == (400, 600, 3) and frames[0].dtype == np.uint8
