"""Forward SDEs: closed-form marginals vs simulation, schedule identities, DDPM's discrete limit, priors, errors."""

import math

import pytest
import torch

from lib.diffusion.sde import VESDE, VPSDE, SubVPSDE, as_time

SDES = [VPSDE(), SubVPSDE(), VESDE(0.05, 5.0)]


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_marginals_match_simulation(sde):
    """Euler-Maruyama simulation of dx = f dt + g dW from fixed x0 matches marginal_prob's mean and std."""
    g = torch.Generator().manual_seed(0)
    n, steps, t_end = 10000, 200, 0.6
    x0 = torch.tensor([1.5, -0.5], dtype=torch.float64).repeat(n, 1)
    x, dt = x0.clone(), t_end / steps
    for i in range(steps):
        f, gg = sde.drift_diffusion(x, i * dt)
        x = x + f * dt + gg[:, None] * math.sqrt(dt) * torch.randn(x.shape, generator=g, dtype=x.dtype)
    mean, std = sde.marginal_prob(x0[:1], t_end)
    tol = 4 * float(std) / math.sqrt(n) + 0.01 * float(std) + 2e-3
    assert torch.allclose(x.mean(0), mean[0], atol=tol)
    assert torch.allclose(x.std(0), std.expand(2), rtol=0.02)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_schedule_identities(sde):
    """f = d log alpha / dt and g^2 = d sigma^2 / dt - 2 f sigma^2 (the ODEs of the mean and variance)."""
    t = torch.linspace(0.05, 1.0, 17, dtype=torch.float64, requires_grad=True)
    (dlog_alpha,) = torch.autograd.grad(torch.log(sde.alpha(t)).sum() + 0 * t.sum(), t)
    (dvar,) = torch.autograd.grad((sde.sigma(t) ** 2).sum(), t)
    with torch.no_grad():
        assert torch.allclose(dlog_alpha, sde.drift_coef(t), rtol=1e-10, atol=1e-12)
        assert torch.allclose(sde.g(t) ** 2, dvar - 2 * sde.drift_coef(t) * sde.sigma(t) ** 2, rtol=1e-8)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_transition_is_consistent(sde):
    t, s = torch.tensor([0.9, 0.5], dtype=torch.float64), torch.tensor([0.2, 0.49], dtype=torch.float64)
    a, v = sde.transition(t, s)
    assert torch.allclose(a * sde.alpha(s), sde.alpha(t))
    assert torch.allclose(a**2 * sde.sigma(s) ** 2 + v, sde.sigma(t) ** 2)
    assert (v > 0).all()


def test_ddpm_is_the_discretisation_of_vp():
    """prod_i (1 - beta_i) with beta_i = beta(t_i) / N tends to alpha(1)^2 = exp(-int beta)."""
    sde = VPSDE()
    errs = []
    for N in (100, 1000, 10000):
        t = (torch.arange(1, N + 1, dtype=torch.float64) - 0.5) / N
        alpha_bar = torch.prod(1 - sde.beta(t) / N)
        errs.append(abs(float(alpha_bar) / float(sde.alpha(torch.tensor(1.0, dtype=torch.float64)) ** 2) - 1))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-2
    assert 8 < errs[1] / errs[2] < 12  # first order in 1 / N


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_prior(sde):
    z = sde.prior_sample((4000, 3), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert abs(float(z.std()) / sde.prior_std - 1) < 0.03
    ref = torch.distributions.Normal(0.0, sde.prior_std).log_prob(z).sum(1)
    assert torch.allclose(sde.prior_logp(z), ref)
    assert float(sde.sigma(torch.tensor(1.0))) == pytest.approx(sde.prior_std, rel=1e-3)


def test_reverse_and_pf_drifts():
    sde, x = VPSDE(), torch.randn(5, 2)
    score = lambda x, t: -x
    f, g = sde.drift_diffusion(x, 0.3)
    rev, g2 = sde.reverse_drift_diffusion(x, 0.3, score)
    assert torch.allclose(rev, f + g[:, None] ** 2 * x) and torch.equal(g, g2)
    assert torch.allclose(sde.probability_flow_drift(x, 0.3, score), f + 0.5 * g[:, None] ** 2 * x)


def test_bad_inputs():
    with pytest.raises(ValueError, match="beta_min"):
        VPSDE(beta_min=-1.0)
    with pytest.raises(ValueError, match="beta_max"):
        VPSDE(beta_min=5.0, beta_max=1.0)
    with pytest.raises(ValueError, match="sigma_max"):
        VESDE(1.0, 0.5)
    with pytest.raises(ValueError, match="t must"):
        as_time(torch.zeros(3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="shape"):
        VPSDE().prior_sample((0, 2))
    with pytest.raises(TypeError):
        VPSDE().marginal_prob([1.0, 2.0], 0.5)


def test_simulate_shapes_and_errors():
    ts, xs = VPSDE().simulate(torch.zeros(5, 2), t_end=0.5, steps=10, generator=torch.Generator().manual_seed(0))
    assert ts.shape == (11,) and xs.shape == (11, 5, 2) and float(ts[-1]) == pytest.approx(0.5)
    assert torch.equal(xs[0], torch.zeros(5, 2)) and xs[-1].std() > 0
    with pytest.raises(ValueError, match="steps"):
        VPSDE().simulate(torch.zeros(5, 2), steps=0)
