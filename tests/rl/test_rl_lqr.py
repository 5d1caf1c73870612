"""Tests for lib/rl/lqr.py: the deterministic policy gradient theorem against finite differences of J (float64)."""

import pytest
import torch

from lib.rl.lqr import LQR, dpg_gradient_sampled, solve_lyapunov, train_linear_policy


def _random_lqr(seed: int, n: int = 3, m: int = 2) -> LQR:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=torch.float64) * 0.4 + torch.eye(n, dtype=torch.float64) * 0.5
    B = torch.randn(n, m, generator=g, dtype=torch.float64)
    M = torch.randn(n, n, generator=g, dtype=torch.float64)
    N = torch.randn(m, m, generator=g, dtype=torch.float64)
    to = lambda x: tuple(map(tuple, x.tolist()))  # noqa: E731
    return LQR(A=to(A), B=to(B), Q=to(M @ M.T + 0.1 * torch.eye(n)), R=to(N @ N.T + 0.1 * torch.eye(m)), gamma=0.9,
               Sigma0=to(torch.eye(n, dtype=torch.float64)))  # fmt: skip


def _finite_difference(lqr: LQR, K: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    fd = torch.zeros_like(K)
    for i in range(K.shape[0]):
        for j in range(K.shape[1]):
            E = torch.zeros_like(K)
            E[i, j] = h
            fd[i, j] = (lqr.J(K + E) - lqr.J(K - E)) / (2 * h)
    return fd


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dpg_theorem_equals_finite_differences_of_J(seed):
    lqr = _random_lqr(seed)
    K_star, _ = lqr.optimal()  # a stabilising gain away from the optimum (where the gradient would be 0)
    K = K_star + 0.2 * torch.randn(
        lqr.m, lqr.n, generator=torch.Generator().manual_seed(seed + 10), dtype=torch.float64
    )
    assert lqr.dpg_gradient(K).abs().max() > 1e-2
    g = lqr.dpg_gradient(K)
    torch.testing.assert_close(g, _finite_difference(lqr, K), rtol=1e-7, atol=1e-7)
    Ka = K.clone().requires_grad_(True)  # and against autograd through the Lyapunov solve
    lqr.J(Ka).backward()
    torch.testing.assert_close(g, Ka.grad, rtol=1e-10, atol=1e-10)


def test_closed_forms_are_consistent():
    lqr = LQR()
    K = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    s = torch.randn(7, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    P = lqr.P(K)
    torch.testing.assert_close(lqr.Q_value(K, s, -s @ K.T), -((s @ P) * s).sum(-1))  # Q(s, mu(s)) = V(s)
    A, B, *_ = lqr.mats()
    X = solve_lyapunov(A - B @ K, torch.eye(2, dtype=torch.float64), 0.95)
    torch.testing.assert_close(X, torch.eye(2, dtype=torch.float64) + 0.95 * (A - B @ K).T @ X @ (A - B @ K))
    # J by Monte Carlo rollouts: J = -sum_t gamma^t E[s_t'(Q + K'RK) s_t]
    states, w = lqr.sample_visits(K, 20_000, 300, torch.Generator().manual_seed(1))
    c = ((states @ torch.tensor(lqr.Q, dtype=torch.float64)) * states).sum(-1) + 0.1 * (states @ K.T).pow(2).sum(-1)
    J_mc = -(w * c.mean(1)).sum()
    assert abs(J_mc - lqr.J(K)) < 0.02 * abs(lqr.J(K))


def test_gaussian_policy_value_and_its_zero_variance_limit():
    lqr = LQR()
    K = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    sigma = 0.5
    g = torch.Generator().manual_seed(0)
    A, B, Q, R, _ = lqr.mats()
    s = torch.randn(20_000, 2, generator=g, dtype=torch.float64)
    total = torch.zeros(20_000, dtype=torch.float64)
    for t in range(300):  # Monte Carlo J of the noisy policy
        a = -s @ K.T + sigma * torch.randn(20_000, 1, generator=g, dtype=torch.float64)
        total -= lqr.gamma**t * (((s @ Q) * s).sum(-1) + ((a @ R) * a).sum(-1))
        s = s @ A.T + a @ B.T
    assert abs(total.mean() - lqr.J_gaussian(K, sigma)) < 3 * total.std() / 20_000**0.5
    gaps = []
    for sig in (0.2, 0.1, 0.05):
        Ka = K.clone().requires_grad_(True)
        lqr.J_gaussian(Ka, sig).backward()
        gaps.append((Ka.grad - lqr.dpg_gradient(K)).abs().max().item())
    assert gaps[0] > 0 and abs(gaps[0] / gaps[1] - 4) < 1e-6 and abs(gaps[1] / gaps[2] - 4) < 1e-6  # O(sigma^2)
    assert lqr.J_gaussian(K, 0.0) == lqr.J(K)


def test_sampled_dpg_estimates_the_gradient():
    lqr = LQR()
    K = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    est = dpg_gradient_sampled(lqr, K, episodes=8192, horizon=300, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(est, lqr.dpg_gradient(K), rtol=0.05, atol=0.05)


def test_gradient_ascent_with_dpg_reaches_the_riccati_gain():
    lqr = LQR()
    K_star, _ = lqr.optimal()
    assert lqr.dpg_gradient(K_star).abs().max() < 1e-10  # the optimum is a stationary point
    K, history = train_linear_policy(lqr, torch.tensor([[1.0, 1.0]], dtype=torch.float64), lr=0.05, steps=2000)
    assert (K - K_star).abs().max() < 1e-8
    assert all(b >= a - 1e-12 for a, b in zip(history, history[1:], strict=False))  # J never decreases


def test_lqr_errors():
    with pytest.raises(ValueError, match="gamma"):
        LQR(gamma=1.0)
    with pytest.raises(ValueError, match="B must"):
        LQR(B=((1.0,),))
    with pytest.raises(ValueError, match="K must have shape"):
        LQR().J(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="stabilise"):
        LQR().J(torch.tensor([[-50.0, 0.0]]))
    with pytest.raises(ValueError, match="lr"):
        train_linear_policy(LQR(), torch.tensor([[1.0, 1.0]]), lr=0.0)
