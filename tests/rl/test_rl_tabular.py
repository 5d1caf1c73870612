"""Tests for lib/rl/tabular.py: the policy gradient theorem and the sampled estimators."""

import pytest
import torch

from lib.rl.tabular import (
    KINDS,
    accumulate_scores,
    exact_values,
    gradient_estimates,
    objective,
    one_step_variance,
    optimal_baseline,
    policy_gradient,
    sample_episodes,
    small_mdp,
    softmax_policy,
    variance_optimal_baseline,
)

MDP = small_mdp()
THETA = torch.tensor([[0.3, -0.2], [0.5, 0.1], [-0.4, 0.2]], dtype=torch.float64)


def test_bellman_equations_hold():
    V, Q = exact_values(MDP, THETA)
    pi = torch.softmax(THETA, -1)
    torch.testing.assert_close((pi * Q).sum(-1), V)  # V = sum_a pi Q


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_policy_gradient_theorem_matches_autograd(seed):
    theta = torch.randn(3, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    theta.requires_grad_(True)
    objective(MDP, theta).backward()
    torch.testing.assert_close(policy_gradient(MDP, theta.detach()), theta.grad)


def test_estimators_unbiased_and_variance_ordered():
    exact = policy_gradient(MDP, THETA)
    ep = sample_episodes(MDP, THETA, 20_000, seed=0)
    var = {}
    for kind in KINDS:
        g = gradient_estimates(MDP, THETA, ep, kind)
        z = (g.mean(0) - exact) / (g.std(0) / len(g) ** 0.5)
        assert z.abs().max() < 4.0, (kind, z)
        var[kind] = g.var(0).sum().item()
    assert var["reinforce"] > 1.5 * var["baseline"]
    assert var["baseline"] > 1.5 * var["advantage"]
    # any state-dependent baseline keeps the estimator unbiased, even a bad one
    g = gradient_estimates(MDP, THETA, ep, "baseline", baseline=torch.tensor([5.0, -3.0, 1.0], dtype=torch.float64))
    assert ((g.mean(0) - exact) / (g.std(0) / len(g) ** 0.5)).abs().max() < 4.0


def test_an_action_dependent_baseline_biases():
    # Psi = G - Q(s, a) has mean zero: the estimator is no longer the gradient (the check can fail)
    ep = sample_episodes(MDP, THETA, 20_000, seed=1)
    exact = policy_gradient(MDP, THETA)
    g_adv = gradient_estimates(MDP, THETA, ep, "advantage")
    g_base = gradient_estimates(MDP, THETA, ep, "baseline")
    biased = g_base - g_adv  # = sum gamma^t score (G_t - Q(s_t, a_t))
    z = (biased.mean(0) - exact) / (biased.std(0) / len(biased) ** 0.5)
    assert z.abs().max() > 10.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="theta"):
        objective(MDP, torch.zeros(2, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="theta"):
        objective(MDP, [[0.0]])
    ep = sample_episodes(MDP, THETA, 10, seed=0)
    with pytest.raises(ValueError, match="kind"):
        gradient_estimates(MDP, THETA, ep, "vtrace")
    with pytest.raises(ValueError, match="episodes"):
        sample_episodes(MDP, THETA, 0, seed=0)
    with pytest.raises(ValueError, match="P"):
        type(MDP)(MDP.P[:, :, :3], MDP.R, MDP.mu0, 0.9)


def test_gae_identities_and_bias_with_a_wrong_critic():
    ep = sample_episodes(MDP, THETA, 20_000, seed=2)
    exact = policy_gradient(MDP, THETA)
    # with the exact critic, GAE(0) is the TD-error estimator and GAE(1) the V-baseline estimator
    torch.testing.assert_close(
        gradient_estimates(MDP, THETA, ep, "gae", lam=0.0), gradient_estimates(MDP, THETA, ep, "td")
    )
    torch.testing.assert_close(
        gradient_estimates(MDP, THETA, ep, "gae", lam=1.0), gradient_estimates(MDP, THETA, ep, "baseline")
    )
    V_wrong = exact_values(MDP, THETA)[0] + torch.tensor([0.8, -0.6, 0.5], dtype=torch.float64)

    def max_z(g):
        return ((g.mean(0) - exact) / (g.std(0) / len(g) ** 0.5)).abs().max().item()

    g1 = gradient_estimates(MDP, THETA, ep, "gae", lam=1.0, values=V_wrong)
    g0 = gradient_estimates(MDP, THETA, ep, "gae", lam=0.0, values=V_wrong)
    assert max_z(g1) < 4.0  # a wrong critic does not bias GAE(1) ...
    assert max_z(g0) > 10.0  # ... but biases GAE(0)
    assert g0.var(0).sum() < g1.var(0).sum()
    with pytest.raises(ValueError, match="values"):
        gradient_estimates(MDP, THETA, ep, "gae", values=torch.zeros(2, dtype=torch.float64))


def test_optimal_baseline_minimises_the_one_step_variance():
    # three actions, so the one-step variance is not removed entirely (with two it is: a line)
    g = torch.Generator().manual_seed(4)
    P = torch.rand(2, 3, 3, generator=g, dtype=torch.float64)
    P = P / P.sum(-1, keepdim=True)
    mdp = type(MDP)(P, torch.randn(2, 3, generator=g, dtype=torch.float64), torch.tensor([0.5, 0.5]).double(), 0.8)
    theta = torch.randn(2, 3, generator=g, dtype=torch.float64)
    b_star = optimal_baseline(mdp, theta)
    b = b_star.clone().requires_grad_(True)
    one_step_variance(mdp, theta, b).sum().backward()
    torch.testing.assert_close(b.grad, torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)  # stationary
    V = exact_values(mdp, theta)[0]
    var_star, var_V = one_step_variance(mdp, theta, b_star), one_step_variance(mdp, theta, V)
    assert (var_star < var_V).all() and (var_star > 1e-6).all()
    # the exact variance agrees with the sampled variance of the one-step estimator
    pi, (_, Q) = softmax_policy(theta), exact_values(mdp, theta)
    a = torch.multinomial(pi[0], 200_000, replacement=True, generator=g)
    score = torch.eye(3, dtype=torch.float64)[a] - pi[0]
    sample = score * (Q[0, a] - b_star[0])[:, None]
    assert sample.var(0).sum().item() == pytest.approx(var_star[0].item(), rel=0.02)


def test_two_actions_optimal_baseline_removes_the_one_step_variance():
    b_star = optimal_baseline(MDP, THETA)
    torch.testing.assert_close(one_step_variance(MDP, THETA, b_star), torch.zeros(3, dtype=torch.float64))
    pi, (_, Q) = softmax_policy(THETA), exact_values(MDP, THETA)
    torch.testing.assert_close(b_star, pi[:, 1] * Q[:, 0] + pi[:, 0] * Q[:, 1])  # closed form for A = 2


def test_variance_optimal_baseline_beats_every_other_state_baseline():
    ep = sample_episodes(MDP, THETA, 5_000, seed=5)
    b_ls = variance_optimal_baseline(MDP, THETA, ep)

    def total_var(b):
        return gradient_estimates(MDP, THETA, ep, "baseline", baseline=b).var(0).sum().item()

    best = total_var(b_ls)
    V = exact_values(MDP, THETA)[0]
    for b in (V, optimal_baseline(MDP, THETA), b_ls + 0.1, b_ls - torch.tensor([0.0, 0.2, 0.0]).double()):
        assert best < total_var(b)


def test_accumulate_scores_checks_shapes():
    ep = sample_episodes(MDP, THETA, 4, seed=0)
    with pytest.raises(ValueError, match="w must"):
        accumulate_scores(MDP, THETA, ep, torch.zeros(1, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="baseline"):
        one_step_variance(MDP, THETA, torch.zeros(2, dtype=torch.float64))


def test_lambda_one_is_biased_when_the_rollout_cuts_the_return():
    # GAE(1) is unbiased with a wrong critic only if its sum runs to the end of the episode; cut into
    # rollouts of T steps it bootstraps from the wrong V_hat at every cut
    ep = sample_episodes(MDP, THETA, 20_000, seed=3)
    exact = policy_gradient(MDP, THETA)
    V = exact_values(MDP, THETA)[0]
    V_wrong = V + torch.tensor([0.8, -0.6, 0.5], dtype=torch.float64)

    def max_z(g):
        return ((g.mean(0) - exact) / (g.std(0) / len(g) ** 0.5)).abs().max().item()

    assert max_z(gradient_estimates(MDP, THETA, ep, "gae", lam=1.0, values=V, rollout=2)) < 4.0
    assert max_z(gradient_estimates(MDP, THETA, ep, "gae", lam=1.0, values=V_wrong, rollout=2)) > 10.0
    long = gradient_estimates(MDP, THETA, ep, "gae", lam=1.0, values=V_wrong, rollout=ep.states.shape[0])
    torch.testing.assert_close(long, gradient_estimates(MDP, THETA, ep, "gae", lam=1.0, values=V_wrong))
    with pytest.raises(ValueError, match="rollout"):
        gradient_estimates(MDP, THETA, ep, "gae", rollout=0)
