"""Tests for lib/rl/tabular.py: the policy gradient theorem and the sampled estimators."""

import pytest
import torch

from lib.rl.tabular import (
    KINDS,
    exact_values,
    gradient_estimates,
    objective,
    policy_gradient,
    sample_episodes,
    small_mdp,
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
    assert var["reinforce"] > 1.5 * var["baseline"] > 1.5 * var["advantage"]
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
    assert max_z(g1) < 4.0 < 10.0 < max_z(g0)  # a wrong critic biases GAE only for lambda < 1
    assert g0.var(0).sum() < g1.var(0).sum()
    with pytest.raises(ValueError, match="values"):
        gradient_estimates(MDP, THETA, ep, "gae", values=torch.zeros(2, dtype=torch.float64))
