"""Schedules: derivatives vs autograd, the derived SDE vs simulation, log-SNR inverse, the discrete table (SD's
scaled linear betas, diffusers' documented semantics), DDPM's limit, priors, errors."""

import math

import pytest
import torch

from lib.diffusion.schedules import (
    SCHEDULES,
    VESDE,
    VPSDE,
    CosineSchedule,
    DiscreteSchedule,
    RectifiedFlow,
    SubVPSDE,
    as_time,
    scaled_linear_betas,
)

ALL = [VPSDE(), SubVPSDE(), VESDE(0.05, 5.0), CosineSchedule(), RectifiedFlow(), DiscreteSchedule()]
IDS = [type(s).__name__ for s in ALL]


def _grad(fn, t):
    t = t.clone().requires_grad_(True)
    (d,) = torch.autograd.grad(fn(t).sum() + 0 * t.sum(), t)
    return d


@pytest.mark.parametrize("sch", ALL, ids=IDS)
def test_derivatives_and_derived_sde(sch):
    """d_alpha, d_sigma match autograd; f = d log alpha/dt; g^2 = d sigma^2/dt - 2 f sigma^2 = -sigma^2 lambda'."""
    t = torch.linspace(0.02, 0.97, 41, dtype=torch.float64)
    da, ds = _grad(sch.alpha, t), _grad(sch.sigma, t)
    dvar, dlam = _grad(lambda u: sch.sigma(u) ** 2, t), _grad(sch.log_snr, t)
    tol = dict(rtol=1e-9, atol=1e-9) if not isinstance(sch, DiscreteSchedule) else dict(rtol=1e-7, atol=1e-9)
    assert torch.allclose(sch.d_alpha(t), da, **tol) and torch.allclose(sch.d_sigma(t), ds, **tol)
    assert torch.allclose(sch.drift_coef(t), _grad(lambda u: torch.log(sch.alpha(u)), t), **tol)
    g2 = dvar - 2 * sch.drift_coef(t) * sch.sigma(t) ** 2
    assert torch.allclose(sch.g2(t), g2, **tol) and torch.allclose(sch.g2(t), -(sch.sigma(t) ** 2) * dlam, **tol)
    assert torch.allclose(sch.g(t) ** 2, g2, **tol)
    assert (dlam < 0).all()  # log-SNR decreases: more noise later
    assert torch.allclose(sch.t_from_log_snr(sch.log_snr(t)), t, atol=1e-12)
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert float(sch.sigma(ends[:1])) == 0.0 and float(sch.alpha(ends[:1])) == 1.0


def test_rectified_flow_closed_forms():
    rf, t = RectifiedFlow(), torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    assert torch.equal(rf.alpha(t), 1 - t) and torch.equal(rf.sigma(t), t)
    assert torch.allclose(rf.drift_coef(t[1:2]), torch.tensor([-1 / 0.75], dtype=torch.float64))
    assert torch.allclose(rf.g2(t[1:2]), torch.tensor([2 * 0.25 / 0.75], dtype=torch.float64))  # 2t / (1 - t)
    assert math.isinf(float(rf.drift_coef(t[2:]))) and float(rf.alpha(t[2:])) == 0.0  # where f and g are infinite
    assert float(CosineSchedule().alpha(t[2:])) < 1e-15


@pytest.mark.parametrize("sch", [VPSDE(), SubVPSDE(), VESDE(0.05, 5.0), CosineSchedule(), RectifiedFlow()],
                         ids=["VP", "subVP", "VE", "cosine", "RF"])  # fmt: skip
def test_marginals_match_simulation(sch):
    """Euler-Maruyama simulation of the derived dx = f x dt + g dW matches alpha x0 and sigma (t_end < 1)."""
    g = torch.Generator().manual_seed(0)
    n, steps, t_end = 10000, 200, 0.6
    x0 = torch.tensor([1.5, -0.5], dtype=torch.float64).repeat(n, 1)
    _, xs = sch.simulate(x0, t_end=t_end, steps=steps, generator=g)
    mean, std = sch.marginal_prob(x0[:1], t_end)
    tol = 4 * float(std) / math.sqrt(n) + 0.01 * float(std) + 2e-3
    assert torch.allclose(xs[-1].mean(0), mean[0], atol=tol)
    assert torch.allclose(xs[-1].std(0), std.expand(2), rtol=0.03)


def test_discrete_schedule_is_diffusers_scaled_linear():
    """diffusers' DDPMScheduler(beta_schedule="scaled_linear") documents betas = linspace(sqrt(b0), sqrt(b1), N)^2
    and alphas_cumprod = cumprod(1 - betas); at t_i = i / N our alpha^2 is that table."""
    N = 1000
    betas = torch.tensor([(0.00085**0.5 + (0.012**0.5 - 0.00085**0.5) * i / (N - 1)) ** 2 for i in range(N)],
                         dtype=torch.float64)  # fmt: skip
    assert torch.allclose(scaled_linear_betas(), betas, rtol=1e-12)
    ac = torch.cumprod(1 - betas, 0)
    sch = DiscreteSchedule()
    assert torch.allclose(sch.alphas_cumprod, ac, rtol=1e-12)
    ti = torch.arange(1, N + 1, dtype=torch.float64) / N
    assert torch.allclose(sch.alpha(ti) ** 2, ac, rtol=1e-10)
    assert torch.allclose(sch.sigma(ti) ** 2, 1 - ac, rtol=1e-10)
    assert float(sch.alphas_cumprod[-1]) == pytest.approx(0.0046600, rel=1e-3)  # SD's final alpha_bar
    # between knots log alpha_bar is linear, so beta(t) = -N log(1 - beta_i) is constant on a step
    mid = (torch.arange(N, dtype=torch.float64) + 0.5) / N
    assert torch.allclose(sch.g2(mid), -N * torch.log1p(-betas), rtol=1e-10)


def test_ddpm_is_the_discretisation_of_vp():
    """The book's one grid convention: step i of N ends at t_i = i / N and beta_i = beta(t_{i - 1/2}) / N (the
    midpoint rule for int beta over the step); prod (1 - beta_i) -> alpha(1)^2 with an O(1/N) error."""
    sde = VPSDE()
    errs = []
    for N in (100, 1000, 10000):
        t = (torch.arange(1, N + 1, dtype=torch.float64) - 0.5) / N
        alpha_bar = torch.prod(1 - sde.beta(t) / N)
        errs.append(abs(float(alpha_bar) / float(sde.alpha(torch.tensor(1.0, dtype=torch.float64)) ** 2) - 1))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-2
    assert 8 < errs[1] / errs[2] < 12  # first order in 1 / N
    # the same betas read as a DiscreteSchedule reproduce the VP's alpha at the knots to O(1/N)
    N = 1000
    dis = DiscreteSchedule(sde.beta((torch.arange(1, N + 1, dtype=torch.float64) - 0.5) / N) / N)
    ti = torch.linspace(0.1, 1.0, 10, dtype=torch.float64)
    assert torch.allclose(dis.alpha(ti), sde.alpha(ti), rtol=4e-2)  # 3% at t = 1 for N = 1000


@pytest.mark.parametrize("sch", ALL, ids=IDS)
def test_transition_and_prior(sch):
    t, s = torch.tensor([0.9, 0.5], dtype=torch.float64), torch.tensor([0.2, 0.49], dtype=torch.float64)
    a, v = sch.transition(t, s)
    assert torch.allclose(a * sch.alpha(s), sch.alpha(t))
    assert torch.allclose(a**2 * sch.sigma(s) ** 2 + v, sch.sigma(t) ** 2) and (v > 0).all()
    z = sch.prior_sample((4000, 3), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert abs(float(z.std()) / sch.prior_std - 1) < 0.03
    assert torch.allclose(sch.prior_logp(z), torch.distributions.Normal(0.0, sch.prior_std).log_prob(z).sum(1))
    assert float(sch.sigma(torch.tensor(1.0))) == pytest.approx(sch.prior_std, rel=3e-3)


def test_registry_and_bad_inputs():
    assert set(SCHEDULES) == {"vp", "subvp", "ve", "cosine", "rf", "scaled_linear"}
    with pytest.raises(ValueError, match="beta_min"):
        VPSDE(beta_min=-1.0)
    with pytest.raises(ValueError, match="beta_max"):
        VPSDE(beta_min=5.0, beta_max=1.0)
    with pytest.raises(ValueError, match="sigma_max"):
        VESDE(1.0, 0.5)
    with pytest.raises(ValueError, match="s must"):
        CosineSchedule(s=1.5)
    with pytest.raises(ValueError, match="betas"):
        DiscreteSchedule(torch.tensor([0.1, 1.2]))
    with pytest.raises(ValueError, match="num_steps"):
        scaled_linear_betas(1)
    with pytest.raises(ValueError, match="t must"):
        as_time(torch.zeros(3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="shape"):
        VPSDE().prior_sample((0, 2))
    with pytest.raises(TypeError):
        VPSDE().marginal_prob([1.0, 2.0], 0.5)
    with pytest.raises(ValueError, match="steps"):
        VPSDE().simulate(torch.zeros(5, 2), steps=0)
    ts, xs = VPSDE().simulate(torch.zeros(5, 2), t_end=0.5, steps=10, generator=torch.Generator().manual_seed(0))
    assert ts.shape == (11,) and xs.shape == (11, 5, 2) and float(ts[-1]) == pytest.approx(0.5)
