"""Tests for lib/rl/returns.py: hand-computed GAE with terminations and truncations."""

import pytest
import torch

from lib.rl.returns import discounted_returns, episode_returns, gae, n_step_returns

# Two environments, three steps (gamma = lambda = 0.5), worked by hand in the chapter's notation.
# env 0: step 1 is truncated (time limit) with V(final obs) = 2.0; step 2 bootstraps at the rollout end.
# env 1: step 0 terminates (its next value 5.0 must be ignored); steps 1-2 run on.
REWARDS = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 2.0]])
VALUES = torch.tensor([[0.5, 1.0], [0.6, 1.0], [0.7, 1.0]])
NEXT_VALUES = torch.tensor([[0.6, 5.0], [2.0, 1.0], [0.8, 2.0]])
TERMINATED = torch.tensor([[False, True], [False, False], [False, False]])
TRUNCATED = torch.tensor([[False, False], [True, False], [False, False]])


def test_gae_hand_computed():
    # env 0: delta = (0.8, 1.4, 0.7); A_2 = 0.7, A_1 = 1.4 (episode cut), A_0 = 0.8 + 0.25 * 1.4 = 1.15
    # env 1: delta = (0.0, -0.5, 2.0); A_2 = 2.0, A_1 = -0.5 + 0.25 * 2 = 0.0, A_0 = 0.0 (terminated)
    A = gae(REWARDS, VALUES, NEXT_VALUES, TERMINATED, TRUNCATED, gamma=0.5, lam=0.5)
    torch.testing.assert_close(A, torch.tensor([[1.15, 0.0], [1.4, 0.0], [0.7, 2.0]]))


def test_truncation_bootstraps_termination_does_not():
    # the same step read as terminated instead of truncated loses gamma * V(final obs) = 0.5 * 2.0
    A_trunc = gae(REWARDS, VALUES, NEXT_VALUES, TERMINATED, TRUNCATED, 0.5, 0.5)
    A_term = gae(REWARDS, VALUES, NEXT_VALUES, TERMINATED | TRUNCATED, torch.zeros_like(TRUNCATED), 0.5, 0.5)
    assert A_trunc[1, 0] - A_term[1, 0] == pytest.approx(0.5 * 2.0)
    # and a terminated step ignores its next value whatever it is
    other = NEXT_VALUES.clone()
    other[0, 1] = -100.0
    torch.testing.assert_close(gae(REWARDS, VALUES, other, TERMINATED, TRUNCATED, 0.5, 0.5), A_trunc)


def test_lambda_zero_is_td_error_and_lambda_one_is_n_step():
    A0 = gae(REWARDS, VALUES, NEXT_VALUES, TERMINATED, TRUNCATED, 0.9, 0.0)
    delta = REWARDS + 0.9 * (~TERMINATED).float() * NEXT_VALUES - VALUES
    torch.testing.assert_close(A0, delta)
    G = n_step_returns(REWARDS, VALUES, NEXT_VALUES, TERMINATED, TRUNCATED, 0.9)
    # env 1, step 1: r + gamma r' + gamma^2 V(s_3) = 0 + 0.9 * 2 + 0.81 * 2.0
    assert G[1, 1].item() == pytest.approx(0.9 * 2.0 + 0.81 * 2.0)
    # env 0, step 0: cut at the truncation: 1 + 0.9 * 1 + 0.81 * V(final) = 1 + 0.9 + 1.62
    assert G[0, 0].item() == pytest.approx(1 + 0.9 + 0.81 * 2.0)


def test_gae_matches_explicit_lambda_sum():
    g = torch.Generator().manual_seed(0)
    T, lam, gamma = 7, 0.8, 0.95
    r, v, v_next = (torch.randn(T, 1, generator=g, dtype=torch.float64) for _ in range(3))
    no = torch.zeros(T, 1, dtype=torch.bool)
    A = gae(r, v, v_next, no, no, gamma, lam)
    delta = r + gamma * v_next - v
    for t in range(T):
        expected = sum((gamma * lam) ** k * delta[t + k] for k in range(T - t))
        torch.testing.assert_close(A[t], expected)


def test_discounted_and_episode_returns():
    torch.testing.assert_close(discounted_returns(torch.tensor([1.0, 0.0, 2.0]), 0.5), torch.tensor([1.5, 1.0, 2.0]))
    G, complete = episode_returns(REWARDS, NEXT_VALUES, TERMINATED, TRUNCATED, 0.5)
    assert complete.tolist() == [[True, True], [True, False], [False, False]]
    assert G[0, 0].item() == pytest.approx(1 + 0.5 * (1 + 0.5 * 2.0))  # bootstrap at the time limit
    assert G[0, 1].item() == pytest.approx(1.0)  # terminated: no bootstrap


def test_bad_inputs():
    with pytest.raises(ValueError, match="values"):
        gae(REWARDS, VALUES[:2], NEXT_VALUES, TERMINATED, TRUNCATED, 0.5, 0.5)
    with pytest.raises(ValueError, match="lam"):
        gae(REWARDS, VALUES, NEXT_VALUES, TERMINATED, TRUNCATED, 0.5, 1.5)
    with pytest.raises(TypeError, match="rewards"):
        gae([1.0], VALUES, NEXT_VALUES, TERMINATED, TRUNCATED, 0.5, 0.5)
    with pytest.raises(ValueError, match="rewards"):
        discounted_returns(REWARDS, 0.5)
    with pytest.raises(TypeError, match="terminated must be a bool"):
        gae(REWARDS, VALUES, NEXT_VALUES, TERMINATED.float(), TRUNCATED, 0.5, 0.5)
    with pytest.raises(TypeError, match="truncated must be a bool"):
        episode_returns(REWARDS, NEXT_VALUES, TERMINATED, TRUNCATED.long(), 0.5)
    with pytest.raises(ValueError, match="next_values"):
        episode_returns(REWARDS, NEXT_VALUES[:2], TERMINATED, TRUNCATED, 0.5)
