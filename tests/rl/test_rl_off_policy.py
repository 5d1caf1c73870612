"""Tests for lib/rl/off_policy.py: importance-sampled policy gradients against the exact tabular ones."""

import pytest
import torch
from torch.distributions import Categorical

from lib.rl.off_policy import (
    KINDS,
    excursion_gradient,
    importance_ratios,
    off_policy_actor_loss,
    off_policy_gradient_estimates,
)
from lib.rl.tabular import discounted_visitation, gradient_estimates, policy_gradient, sample_episodes, small_mdp

MDP = small_mdp()
THETA = torch.tensor([[0.3, -0.2], [0.5, 0.1], [-0.4, 0.2]], dtype=torch.float64)
THETA_B = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)


def max_z(g, target):
    return ((g.mean(0) - target) / (g.std(0) / len(g) ** 0.5)).abs().max().item()


def test_on_policy_data_reduces_to_the_advantage_estimator():
    ep = sample_episodes(MDP, THETA, 500, seed=0)
    assert torch.equal(importance_ratios(THETA, THETA, ep), torch.ones_like(ep.rewards))
    for kind in KINDS:
        torch.testing.assert_close(
            off_policy_gradient_estimates(MDP, THETA, THETA, ep, kind), gradient_estimates(MDP, THETA, ep, "advantage")
        )
    torch.testing.assert_close(excursion_gradient(MDP, THETA, THETA), policy_gradient(MDP, THETA))


def test_per_decision_is_unbiased_for_grad_J_one_step_for_the_excursion_gradient():
    ep = sample_episodes(MDP, THETA_B, 20_000, seed=1)
    exact, g_b = policy_gradient(MDP, THETA), excursion_gradient(MDP, THETA, THETA_B)
    per_decision = off_policy_gradient_estimates(MDP, THETA, THETA_B, ep, "per-decision")
    one_step = off_policy_gradient_estimates(MDP, THETA, THETA_B, ep, "one-step")
    assert max_z(per_decision, exact) < 4.0
    assert max_z(one_step, g_b) < 4.0
    assert max_z(one_step, exact) > 10.0  # the two targets differ, and the test can tell them apart
    assert max_z(per_decision, g_b) > 10.0
    assert per_decision.var(0).sum() > 10 * one_step.var(0).sum()  # the price of the product of ratios


def test_off_policy_actor_loss_gives_the_excursion_gradient_exactly():
    # enumerate every (s, a) with weight d^b(s) pi_b(a|s): the expectation, not a sample
    S, A = THETA.shape
    theta = THETA.clone().requires_grad_(True)
    s, a = torch.arange(S).repeat_interleave(A), torch.arange(A).repeat(S)
    pi_b = torch.softmax(THETA_B, -1)
    weight = discounted_visitation(MDP, THETA_B)[s] * pi_b[s, a] * S * A  # mean over S*A rows
    from lib.rl.tabular import exact_values

    V, Q = exact_values(MDP, THETA)
    psi = weight * (Q[s, a] - V[s])
    loss = off_policy_actor_loss(Categorical(logits=theta[s]), a, pi_b[s, a].log(), psi)
    loss.backward()
    torch.testing.assert_close(-theta.grad, excursion_gradient(MDP, THETA, THETA_B))


def test_off_policy_actor_loss_on_policy_and_clipped():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=g, requires_grad=True)
    a, psi = torch.randint(0, 3, (6,), generator=g), torch.randn(6, generator=g)
    log_prob_b = Categorical(logits=logits.detach()).log_prob(a)

    def grad(rho_clip=None):
        loss = off_policy_actor_loss(Categorical(logits=logits), a, log_prob_b, psi, rho_clip)
        return torch.autograd.grad(loss, logits)[0]

    grad_off = grad()
    (grad_on,) = torch.autograd.grad(-(Categorical(logits=logits).log_prob(a) * psi).mean(), logits)
    torch.testing.assert_close(grad_off, grad_on)
    # a clip above every ratio changes nothing; a clip at 0.5 scales rho = 1 down to 0.5
    grad_big, grad_half = grad(2.0), grad(0.5)
    torch.testing.assert_close(grad_big, grad_on)
    torch.testing.assert_close(grad_half, 0.5 * grad_on)


def test_bad_inputs():
    ep = sample_episodes(MDP, THETA, 4, seed=0)
    with pytest.raises(ValueError, match="kind"):
        off_policy_gradient_estimates(MDP, THETA, THETA_B, ep, "retrace")
    with pytest.raises(ValueError, match="theta_b"):
        importance_ratios(THETA, THETA_B[:2], ep)
    dist = Categorical(logits=torch.zeros(4, 2))
    a = torch.zeros(4, dtype=torch.long)
    with pytest.raises(TypeError, match="dist"):
        off_policy_actor_loss(torch.zeros(4), a, torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="psi"):
        off_policy_actor_loss(dist, a, torch.zeros(4), torch.zeros(4, 1))
    with pytest.raises(ValueError, match="matching"):
        off_policy_actor_loss(dist, a, torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="rho_clip"):
        off_policy_actor_loss(dist, a, torch.zeros(4), torch.zeros(4), rho_clip=0.0)
