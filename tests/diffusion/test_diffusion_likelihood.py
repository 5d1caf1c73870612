"""ODE likelihoods: the generic ode_likelihood on a flow with a closed-form density (either direction, exact and
Hutchinson divergences), the PF-ODE wrapper on every kind of schedule and prediction against the closed form of a
Gaussian; bits/dim."""

import math

import pytest
import torch

from lib.diffusion.likelihood import (
    bits_per_dim,
    divergence_exact,
    divergence_hutchinson,
    make_probe,
    ode_likelihood,
    pf_ode_likelihood,
    uniform_dequantize,
)
from lib.diffusion.predictions import Denoiser
from lib.diffusion.schedules import VESDE, VPSDE, RectifiedFlow
from lib.diffusion.score import gmm_denoiser, gmm_logp

M = torch.tensor([[0.5, -1.0, 0.2]], dtype=torch.float64)
C = torch.tensor([[[0.3, 0.2, 0.0], [0.2, 1.2, -0.3], [0.0, -0.3, 0.6]]], dtype=torch.float64)  # not diagonal:
W = torch.ones(1, dtype=torch.float64)  # for a diagonal Jacobian a Rademacher probe gives the trace exactly


def test_divergences_match_the_jacobian_trace():
    A = torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    v = torch.tanh(x @ A.T)
    J = torch.func.vmap(torch.func.jacrev(lambda z: torch.tanh(z @ A.T)))(x.detach())
    assert torch.allclose(divergence_exact(v, x), torch.diagonal(J, dim1=1, dim2=2).sum(1), atol=1e-12)
    probes = [make_probe(x, "gaussian", torch.Generator().manual_seed(s)) for s in range(4000)]
    est = torch.stack([divergence_hutchinson(torch.tanh(x @ A.T), x, z) for z in probes]).mean(0)
    assert torch.allclose(est, torch.diagonal(J, dim1=1, dim2=2).sum(1), atol=0.15)
    with pytest.raises(ValueError, match="probe"):
        make_probe(x, "uniform")


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_ode_likelihood_of_a_linear_flow(direction):
    """dx/dt = -x maps N(0, e^{-2} ... ): with v = -x, x(1) = e^{-1} x(0) and log p(x) = log p_1(z) - D (div = -D)."""
    D = 3
    x = torch.randn(5, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    prior = lambda z: (
        torch.distributions.Normal(0.0, math.exp(-1.0)).log_prob(z).sum(1)
    )  # law of x(1) if x(0) ~ N(0, I)
    if direction == "forward":
        res = ode_likelihood(lambda x, t: -x, x, prior, rtol=1e-9, atol=1e-9)
        assert torch.allclose(res.z, x * math.exp(-1.0), atol=1e-7)
    else:  # data at t_start = 1, prior at t_end = 0: dx/dt = -x run backwards expands
        prior = lambda z: torch.distributions.Normal(0.0, math.e).log_prob(z).sum(1)
        res = ode_likelihood(lambda x, t: -x, x, prior, t_start=1.0, t_end=0.0, rtol=1e-9, atol=1e-9)
        assert torch.allclose(res.z, x * math.e, atol=1e-6)
    exact = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(1)
    assert torch.allclose(res.logp, exact, atol=1e-6) and res.nfe > 5
    assert torch.allclose(res.delta_logp, torch.full((5,), -float(D) if direction == "forward" else float(D),
                                                     dtype=torch.float64), atol=1e-6)  # fmt: skip


@pytest.mark.parametrize("sch,prediction", [(VPSDE(), "eps"), (VESDE(0.01, 20.0), "x0"), (RectifiedFlow(), "velocity")],
                         ids=["VP-eps", "VE-x0", "RF-velocity"])  # fmt: skip
def test_pf_ode_likelihood_of_a_gaussian(sch, prediction):
    den = gmm_denoiser(sch, W, M, C, prediction)
    x = M + torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    res = pf_ode_likelihood(den, sch, x, divergence="exact", rtol=1e-7, atol=1e-7)
    exact = torch.distributions.MultivariateNormal(M[0], C[0]).log_prob(x)
    # with the true p_1 in place of the prior the change of variables is exact (up to blurring by sigma(t_min)) ...
    true_p1 = gmm_logp(res.z, 1.0, sch, W, M, C) if not isinstance(sch, RectifiedFlow) else res.prior_logp
    assert torch.allclose(true_p1 + res.delta_logp, exact, atol=1e-3), (true_p1 + res.delta_logp, exact)
    # ... and the prior mismatch (VP: alpha(1) = 0.0066; VE: the offset against sigma_max; RF: none) costs little
    assert torch.allclose(
        res.logp, exact, atol={"VPSDE": 3e-2, "VESDE": 0.2, "RectifiedFlow": 1e-3}[type(sch).__name__]
    )
    assert res.z.shape == x.shape
    if not isinstance(sch, VPSDE):
        return
    runs = [pf_ode_likelihood(den, sch, x, divergence="hutchinson", rtol=1e-5, atol=1e-5,
                              generator=torch.Generator().manual_seed(s)) for s in range(8)]  # fmt: skip
    hutch = torch.stack([r.logp for r in runs])
    assert (hutch.std(0) > 1e-4).all()  # noisy ...
    assert (hutch.mean(0) - res.logp).abs().max() < 4 * hutch.std(0).max() / 8**0.5 + 1e-3  # ... but centred


def test_bits_per_dim_and_errors():
    logp = torch.tensor([-64 * math.log(2.0)])
    assert float(bits_per_dim(logp, 64)) == pytest.approx(1.0)
    assert float(bits_per_dim(logp, 64, bin_width=0.5)) == pytest.approx(2.0)
    u = uniform_dequantize(torch.zeros(1000, 4), 0.25, torch.Generator().manual_seed(0))
    assert u.abs().max() <= 0.125 and u.std() > 0.05
    with pytest.raises(ValueError, match="num_dims"):
        bits_per_dim(logp, 0)
    v = lambda x, t: -x
    with pytest.raises(ValueError, match="divergence"):
        ode_likelihood(v, torch.zeros(2, 2), lambda z: z.sum(1), divergence="trace")
    with pytest.raises(ValueError, match="t_start"):
        ode_likelihood(v, torch.zeros(2, 2), lambda z: z.sum(1), t_start=0.5, t_end=0.5)
    with pytest.raises(ValueError, match="x must"):
        ode_likelihood(v, torch.zeros(2), lambda z: z.sum(1))
    with pytest.raises(TypeError, match="callable"):
        ode_likelihood(v, torch.zeros(2, 2), None)
    with pytest.raises(TypeError, match="Denoiser"):
        pf_ode_likelihood(v, VPSDE(), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="t_min"):
        pf_ode_likelihood(Denoiser(lambda x, t: x), VPSDE(), torch.zeros(2, 2), t_min=0.0)


def test_categorical_pixel_baseline():
    from lib.diffusion.likelihood import categorical_pixel_bits_per_dim

    x = torch.full((10, 1, 2, 2), -1.0)
    # add-one smoothing over 17 levels with 10 identical images: p = 11 / 27 for the seen level
    assert categorical_pixel_bits_per_dim(x, x) == pytest.approx(-math.log2(11 / 27))
    with pytest.raises(ValueError, match="shape"):
        categorical_pixel_bits_per_dim(x, torch.zeros(3, 1, 3, 3))


def test_divergence_create_graph_and_shape_errors():
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    v = x**3  # div v = 3 * sum(x^2), d/dx div v = 6 x
    (g,) = torch.autograd.grad(divergence_exact(v, x, create_graph=True).sum(), x)
    assert torch.allclose(g, 6 * x)
    z = torch.ones_like(x)
    (g,) = torch.autograd.grad(divergence_hutchinson(x**3, x, z, create_graph=True).sum(), x)
    assert torch.allclose(g, 6 * x)  # a probe of ones is exact for a diagonal Jacobian
    with pytest.raises(ValueError, match="same shape"):
        divergence_exact(x.sum(1), x)
    with pytest.raises(ValueError, match="one shape"):
        divergence_hutchinson(x**3, x, z[:, :1])
