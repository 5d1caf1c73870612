"""PF-ODE log-likelihood against the closed form of a Gaussian; Hutchinson vs exact; bits/dim."""

import math

import pytest
import torch

from lib.diffusion.likelihood import bits_per_dim, pf_ode_likelihood, uniform_dequantize
from lib.diffusion.score import gmm_logp, gmm_score
from lib.diffusion.sde import VESDE, VPSDE


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(0.01, 20.0)], ids=["VP", "VE"])
def test_pf_ode_likelihood_of_a_gaussian(sde):
    m = torch.tensor([[0.5, -1.0, 0.2]], dtype=torch.float64)
    C = torch.tensor([[[0.3, 0.2, 0.0], [0.2, 1.2, -0.3], [0.0, -0.3, 0.6]]], dtype=torch.float64)  # not diagonal:
    # for a diagonal Jacobian a Rademacher probe gives the trace exactly
    w = torch.ones(1, dtype=torch.float64)
    sf = lambda x, t: gmm_score(x, t, sde, w, m, C)
    x = m + torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    res = pf_ode_likelihood(sf, sde, x, divergence="exact", rtol=1e-7, atol=1e-7)
    exact = torch.distributions.MultivariateNormal(m[0], C[0]).log_prob(x)
    # with the true p_1 in place of the prior N(0, prior_std^2 I) the change of variables is exact ...
    true_p1 = gmm_logp(res.z, 1.0, sde, w, m, C)
    assert torch.allclose(true_p1 + res.delta_logp, exact, atol=1e-4), (true_p1 + res.delta_logp, exact)
    # ... and the prior mismatch (VP: alpha(1) = 0.0066 != 0; VE: the data's offset against sigma_max) costs
    # about 1e-2 (VP) to 1e-1 (VE) nats
    assert torch.allclose(res.logp, exact, atol=3e-2 if isinstance(sde, VPSDE) else 0.2)
    assert res.nfe > 10 and res.z.shape == x.shape
    if not isinstance(sde, VPSDE):
        return
    # Hutchinson: unbiased, so the average over independent probes approaches the exact-divergence value
    runs = [
        pf_ode_likelihood(sf, sde, x, "hutchinson", rtol=1e-5, atol=1e-5, generator=torch.Generator().manual_seed(s))
        for s in range(8)
    ]
    hutch = torch.stack([r.logp for r in runs])
    assert (hutch.std(0) > 1e-4).all()  # it is noisy ...
    assert (hutch.mean(0) - res.logp).abs().max() < 4 * hutch.std(0).max() / 8**0.5 + 1e-3  # ... but centred


def test_bits_per_dim():
    logp = torch.tensor([-64 * math.log(2.0)])
    assert float(bits_per_dim(logp, 64)) == pytest.approx(1.0)
    assert float(bits_per_dim(logp, 64, bin_width=0.5)) == pytest.approx(2.0)
    x = torch.zeros(1000, 4)
    u = uniform_dequantize(x, 0.25, torch.Generator().manual_seed(0))
    assert u.abs().max() <= 0.125 and u.std() > 0.05
    with pytest.raises(ValueError, match="num_dims"):
        bits_per_dim(logp, 0)
    with pytest.raises(ValueError, match="divergence"):
        pf_ode_likelihood(lambda x, t: -x, VPSDE(), torch.zeros(2, 2), divergence="trace")


def test_categorical_pixel_baseline():
    from lib.diffusion.likelihood import categorical_pixel_bits_per_dim

    x = torch.full((10, 1, 2, 2), -1.0)
    # add-one smoothing over 17 levels with 10 identical images: p = 11 / 27 for the seen level
    assert categorical_pixel_bits_per_dim(x, x) == pytest.approx(-math.log2(11 / 27))
    with pytest.raises(ValueError, match="shape"):
        categorical_pixel_bits_per_dim(x, torch.zeros(3, 1, 3, 3))
