"""Flow matching: the straight path, CFM = FM + constant with equal gradients (Gaussian data, closed-form
marginal velocity), the exact velocity's CFM loss in closed form, Euler/ODE sampling, straightness, reflow."""

import pytest
import torch

from lib.flows.matching import (
    cfm_loss,
    euler_sample,
    gaussian_cfm_gap,
    gaussian_fm_loss,
    gaussian_marginal_velocity,
    ode_sample,
    ot_path,
    reflow_pairs,
    straightness,
)

MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
SIGMA = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64)


def test_ot_path():
    x0, eps, t = torch.randn(4, 3), torch.randn(4, 3), torch.rand(4)
    x_t, u = ot_path(x0, eps, t)
    assert torch.allclose(x_t, (1 - t[:, None]) * x0 + t[:, None] * eps) and torch.allclose(u, eps - x0)
    with pytest.raises(ValueError, match="same shape"):
        ot_path(x0, eps[:, :2], t)
    with pytest.raises(ValueError, match="t must"):
        ot_path(x0, eps, t[:2])


def test_marginal_velocity_is_the_conditional_mean():
    """E[eps - x0 | x_t] by regression on simulated pairs (linear in x_t for Gaussian data) vs the closed form."""
    g = torch.Generator().manual_seed(0)
    n, t = 200000, 0.4
    x0 = MU + torch.randn(n, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(SIGMA).T
    eps = torch.randn(n, 2, generator=g, dtype=torch.float64)
    x_t, u = ot_path(x0, eps, torch.full((n,), t, dtype=torch.float64))
    design = torch.cat([x_t, torch.ones(n, 1, dtype=torch.float64)], 1)
    coef = torch.linalg.lstsq(design, u).solution  # u ~ x_t B + c
    probe = torch.tensor([[0.3, -0.2], [1.0, 0.5]], dtype=torch.float64)
    fit = torch.cat([probe, torch.ones(2, 1, dtype=torch.float64)], 1) @ coef
    exact = gaussian_marginal_velocity(probe, torch.full((2,), t, dtype=torch.float64), MU, SIGMA)
    assert torch.allclose(fit, exact, atol=0.01)


def test_cfm_equals_fm_plus_constant_with_equal_gradients():
    gaps, grads = [], []
    for seed in range(3):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()

        def v(x, t, net=net):
            return net(torch.cat([x, t[:, None]], 1))

        cfm, fm = gaussian_fm_loss(v, MU, SIGMA, 20000, torch.Generator().manual_seed(7))
        gaps.append(float(cfm - fm))
        g_cfm = torch.autograd.grad(cfm, list(net.parameters()), retain_graph=True)
        g_fm = torch.autograd.grad(fm, list(net.parameters()))
        grads.append(max(float((a - b).abs().max()) for a, b in zip(g_cfm, g_fm, strict=True)))
    t = (torch.arange(2000, dtype=torch.float64) + 0.5) / 2000
    constant = float(gaussian_cfm_gap(t, SIGMA).mean())  # E_t tr Cov(u | x_t)
    for gap in gaps:  # same draws for every network: the gap's Monte Carlo error is shared, not the network's
        assert gap == pytest.approx(constant, rel=0.03)
    assert max(gaps) - min(gaps) < 0.02 * constant
    assert max(grads) < 0.05  # equal in expectation; here a 20,000-sample estimate of each


def test_exact_velocity_cfm_loss_closed_form():
    v = lambda x, t: gaussian_marginal_velocity(x, t, MU, SIGMA)  # noqa: E731
    g = torch.Generator().manual_seed(3)
    x0 = MU + torch.randn(100000, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(SIGMA).T
    loss = float(cfm_loss(v, x0, generator=g))
    t = (torch.arange(2000, dtype=torch.float64) + 0.5) / 2000
    assert loss == pytest.approx(float(gaussian_cfm_gap(t, SIGMA).mean()), rel=0.02)


def test_exact_velocity_transports_noise_to_data():
    v = lambda x, t: gaussian_marginal_velocity(x, t, MU, SIGMA)  # noqa: E731
    eps = torch.randn(20000, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for x in (ode_sample(v, eps, rtol=1e-7, atol=1e-7).x0, euler_sample(v, eps, 200)):
        assert torch.allclose(x.mean(0), MU, atol=0.03)
        assert torch.allclose(torch.cov(x.T), SIGMA, atol=0.03)


def test_straightness_and_reflow_pairs():
    const = lambda x, t: torch.ones_like(x)  # noqa: E731 (straight paths at constant speed)
    eps = torch.randn(10, 2)
    assert straightness(const, eps, 7) == pytest.approx(0.0, abs=1e-10)
    curved = lambda x, t: torch.stack([-x[:, 1], x[:, 0]], 1)  # noqa: E731 (rotation: circular paths)
    assert straightness(curved, eps, 50) > 0.1
    x0, e = reflow_pairs(const, 5, (2,), torch.Generator().manual_seed(0))
    assert x0.shape == e.shape == (5, 2) and torch.allclose(x0, e - 1, atol=1e-5)
    with pytest.raises(ValueError, match="n must"):
        reflow_pairs(const, 0, (2,))
    with pytest.raises(ValueError, match="steps"):
        euler_sample(const, eps, 0)
