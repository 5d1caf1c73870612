"""Tests for lib/rl/{networks,rollout,evaluate,actor_critic}.py: rollouts, errors and trainer smoke runs."""

import numpy as np
import pytest
import torch
from torch.distributions import Categorical

from lib.rl import tabular
from lib.rl.actor_critic import (
    A2CConfig,
    Batch,
    QACConfig,
    ReinforceConfig,
    policy_gradient_loss,
    qac_batch,
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
    with pytest.raises(ValueError, match="seed"):
        evaluate_returns(pol, "Pendulum-v1", 1, -1)
    with pytest.raises(TypeError, match="env_id"):
        evaluate(pol, None, 1, 0)
    with pytest.raises(TypeError, match="policy"):
        evaluate(torch.nn.Linear(3, 2), "Pendulum-v1", 1, 0)
    with pytest.raises(ValueError, match="every"):
        episode_frames(pol, "Pendulum-v1", seed=0, every=0)


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
    assert len(result.eval_returns) == len(result.eval_steps)
    assert len(result.eval_steps) >= 1
    assert len(result.eval_entropy) == len(result.eval_steps)
    assert all(np.isfinite(result.eval_returns))
    assert all(torch.isfinite(p).all() for p in result.policy.parameters())


def test_reinforce_counts_its_stale_steps():
    r = train_reinforce(ReinforceConfig(total_steps=3_000, eval_every=3_000, eval_episodes=1, episodes_per_update=2))
    assert r.stale_fraction is not None and 0.0 < r.stale_fraction < 1.0
    assert train_a2c(A2CConfig(total_steps=256, eval_every=256, eval_episodes=1)).stale_fraction is None


def test_trainer_errors():
    with pytest.raises(TypeError, match="QAC needs a Discrete"):
        train_qac(QACConfig(env_id="Pendulum-v1", total_steps=64))
    with pytest.raises(TypeError, match="config"):
        train_a2c(QACConfig(total_steps=64))
    with pytest.raises(ValueError, match="num_envs"):
        A2CConfig(num_envs=0)
    with pytest.raises(ValueError, match="gamma"):
        A2CConfig(gamma=1.5)
    with pytest.raises(ValueError, match="gae_lambda"):
        A2CConfig(gae_lambda=1.5)
    with pytest.raises(ValueError, match="critic_lambda"):
        QACConfig(critic_lambda=-0.1)
    assert A2CConfig().anneal_lr and not QACConfig().anneal_lr  # annealing is A2C's default


def test_reproducible_and_frames():
    cfg = A2CConfig(total_steps=256, eval_every=256, eval_episodes=2, seed=3)
    a, b = train_a2c(cfg), train_a2c(cfg)
    for p, q in zip(a.policy.parameters(), b.policy.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert a.episodes == b.episodes
    frames = episode_frames(a.policy, "CartPole-v1", seed=0, every=4, max_frames=3)
    assert len(frames) == 3 and frames[0].shape == (400, 600, 3) and frames[0].dtype == np.uint8


class TabularSoftmax(torch.nn.Module):
    """pi(a|s) = softmax(theta[s]) on one-hot states: the tabular policy as a network for the loss."""

    def __init__(self, theta):
        super().__init__()
        self.theta = torch.nn.Parameter(theta.clone())

    def forward(self, obs):
        return Categorical(logits=obs @ self.theta)


MDP = tabular.small_mdp()
THETA = torch.tensor([[0.3, -0.2], [0.5, 0.1], [-0.4, 0.2]], dtype=torch.float64)
PLAIN = A2CConfig(normalize_advantages=False, ent_coef=0.0)


def _loss_grad(batch, cfg=PLAIN, theta=THETA):
    policy = TabularSoftmax(theta)
    policy_gradient_loss(policy, batch, cfg).backward()
    return policy.theta.grad


def test_policy_gradient_loss_gives_the_exact_gradient():
    # one row per (s, a) with Psi = S A d(s) pi(a|s) Q(s, a): -grad of the mean is sum_sa d pi Q grad log pi
    S, A = MDP.S, MDP.A
    s, a = torch.arange(S).repeat_interleave(A), torch.arange(A).repeat(S)
    _, Q = tabular.exact_values(MDP, THETA)
    d, pi = tabular.discounted_visitation(MDP, THETA), tabular.softmax_policy(THETA)
    obs = torch.eye(S, dtype=torch.float64)[s]
    batch = Batch(obs, a, S * A * d[s] * pi[s, a] * Q[s, a], torch.zeros((), dtype=torch.float64))
    torch.testing.assert_close(-_loss_grad(batch), tabular.policy_gradient(MDP, THETA))


def test_policy_gradient_loss_matches_the_sampled_estimator_step_for_step():
    # the deep loss on the steps of M episodes, Psi_t = gamma^t (G_t - V(s_t)), is M / B times the mean of
    # the tabular "baseline" estimator, which the tabular tests show unbiased
    ep = tabular.sample_episodes(MDP, THETA, 300, seed=0)
    expected = tabular.gradient_estimates(MDP, THETA, ep, "baseline").mean(0)
    V, _ = tabular.exact_values(MDP, THETA)
    H, M = ep.states.shape
    G = torch.zeros_like(ep.rewards)
    running = torch.zeros(M, dtype=torch.float64)
    for t in reversed(range(H)):
        running = ep.rewards[t] + MDP.gamma * running
        G[t] = running
    s = ep.states.clamp(max=MDP.S - 1)
    psi = (MDP.gamma ** torch.arange(H, dtype=torch.float64))[:, None] * (G - V[s])
    alive = ep.alive
    B = int(alive.sum())
    batch = Batch(torch.eye(MDP.S, dtype=torch.float64)[s[alive]], ep.actions[alive], psi[alive], torch.zeros(()))
    torch.testing.assert_close(-_loss_grad(batch) * B / M, expected)


def test_policy_gradient_loss_entropy_and_normalisation():
    g = torch.Generator().manual_seed(1)
    obs = torch.eye(3, dtype=torch.float64)[torch.randint(0, 3, (10,), generator=g)]
    a = torch.randint(0, 2, (10,), generator=g)
    psi = torch.randn(10, generator=g, dtype=torch.float64)
    zero = torch.zeros((), dtype=torch.float64)
    # the entropy bonus: -grad of -c mean H is c grad mean H, and dH/dtheta_sa = -pi (log pi + H) (per row)
    grad_ent = _loss_grad(Batch(obs, a, torch.zeros(10, dtype=torch.float64), zero), A2CConfig(ent_coef=0.1))
    pi = tabular.softmax_policy(THETA)
    H = -(pi * pi.log()).sum(-1, keepdim=True)
    dH = -pi * (pi.log() + H)  # (S, A)
    torch.testing.assert_close(-grad_ent, 0.1 * obs.sum(0)[:, None] * dH / 10)
    # standardising Psi is the same as passing the standardised Psi
    z = (psi - psi.mean()) / (psi.std() + 1e-8)
    torch.testing.assert_close(
        _loss_grad(Batch(obs, a, psi, zero), A2CConfig(ent_coef=0.0)), _loss_grad(Batch(obs, a, z, zero))
    )


def test_qac_batch_targets_and_baseline():
    envs = make_vector_env("CartPole-v1", 3)
    seed_policy = CategoricalPolicy(4, 2)
    ro = RolloutCollector(envs, seed_policy, seed=0).collect(30)
    envs.close()
    from lib.rl.networks import QNet

    torch.manual_seed(0)
    critic = QNet(4, 2)
    plain = qac_batch(ro, seed_policy, critic, QACConfig(), {})
    with torch.no_grad():
        q_sa = critic(ro.obs).gather(-1, ro.actions.unsqueeze(-1)).squeeze(-1)
        V_next = (seed_policy(ro.next_obs).probs * critic(ro.next_obs)).sum(-1)
        target = ro.rewards + 0.99 * (~ro.terminated).float() * V_next  # expected SARSA, by hand
        V_Q = (seed_policy(ro.obs).probs * critic(ro.obs)).sum(-1)
    torch.testing.assert_close(plain.critic_loss, (q_sa - target).pow(2).mean())
    torch.testing.assert_close(plain.psi, q_sa.flatten())
    based = qac_batch(ro, seed_policy, critic, QACConfig(baseline=True), {})
    torch.testing.assert_close(based.psi, (q_sa - V_Q).flatten())
    lam = qac_batch(ro, seed_policy, critic, QACConfig(critic_lambda=0.9), {})
    assert not torch.allclose(lam.critic_loss, plain.critic_loss)  # the lambda-return is another target


def test_reinforce_batch_carries_unfinished_episodes_across_rollouts():
    # hand-made rollouts, obs = a step id, critic 0: Psi must be the Monte Carlo return of each step, every
    # step used exactly once, and the steps that an earlier policy sampled counted as stale
    from lib.rl.actor_critic import reinforce_batch
    from lib.rl.rollout import Rollout

    class ZeroCritic(torch.nn.Module):
        def forward(self, obs):
            return torch.zeros(obs.shape[:-1])

    def rollout(ids, rewards, terminated):
        ids, f = torch.tensor(ids, dtype=torch.float32)[..., None], torch.zeros(len(ids), 2, dtype=torch.bool)
        term = torch.tensor(terminated, dtype=torch.bool)
        return Rollout(ids, torch.zeros(len(ids), 2, dtype=torch.long), torch.tensor(rewards), term, f, ids + 100)

    gamma, cfg, state = 0.5, ReinforceConfig(gamma=0.5, episodes_per_update=1), {}
    # env 0: episode A = ids 0, 2 (terminates at t = 1); episode B starts at id 4. env 1: nothing ends yet
    first = rollout([[0, 1], [2, 3], [4, 5]], [[1.0, 1.0], [1.0, 2.0], [1.0, 3.0]], [[0, 0], [1, 0], [0, 0]])
    b1 = reinforce_batch(first, None, ZeroCritic(), cfg, state)
    assert dict(zip(b1.obs[:, 0].tolist(), b1.psi.tolist(), strict=True)) == {0: 1 + gamma, 2: 1.0}
    # env 0: B ends at id 6, a new episode starts at id 8; env 1: ids 1, 3, 5, 7, 9 end at id 9
    second = rollout([[6, 7], [8, 9]], [[1.0, 4.0], [1.0, 5.0]], [[1, 0], [0, 1]])
    b2 = reinforce_batch(second, None, ZeroCritic(), cfg, state)
    env1 = [1.0, 2.0, 3.0, 4.0, 5.0]
    expected = {4: 1 + gamma, 6: 1.0}
    expected.update({2 * k + 1: sum(gamma**j * r for j, r in enumerate(env1[k:])) for k in range(5)})
    got = dict(zip(b2.obs[:, 0].tolist(), b2.psi.tolist(), strict=True))
    assert got.keys() == expected.keys()
    for k in expected:
        assert got[k] == pytest.approx(expected[k]), k
    # stale: ids 4 (env 0) and 1, 3, 5 (env 1) were sampled before the first update; 9 steps used in all
    assert state["steps_used"] == 9 and state["stale_steps"] == 4
    assert state["pending"].obs[:, :, 0].tolist() == [[8.0, 9.0]]  # only the unfinished episode waits
    assert reinforce_batch(rollout([[10, 11]], [[1.0, 1.0]], [[0, 0]]), None, ZeroCritic(), cfg, state) is None
