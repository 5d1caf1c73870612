"""Imputation by replacement: the known coordinates are kept, the result follows the exact conditional of a
mixture far better than the marginal does; the exact conditional against brute-force quadrature; errors."""

import pytest
import torch

from lib.data.toy2d import ring_mixture
from lib.diffusion.inpaint import gmm_conditional, impute
from lib.diffusion.schedules import VPSDE
from lib.diffusion.score import gmm_denoiser
from lib.metrics import energy_distance


def test_gmm_conditional_matches_quadrature():
    gm = ring_mixture(8, 3.0, 0.5, dtype=torch.float64)
    gm.covs[0] = torch.tensor([[0.4, 0.15], [0.15, 0.2]], dtype=torch.float64)  # one correlated component
    w, m, v = gmm_conditional(gm.weights, gm.means, gm.covs, known=0, value=1.3)
    grid = torch.linspace(-8, 8, 20001, dtype=torch.float64)
    joint = gm.log_prob(torch.stack([torch.full_like(grid, 1.3), grid], 1)).exp()
    cond = joint / torch.trapezoid(joint, grid)
    mix = (w * torch.exp(-0.5 * (grid[:, None] - m) ** 2 / v) / (2 * torch.pi * v).sqrt()).sum(1)
    assert torch.allclose(mix, cond, atol=1e-8)
    with pytest.raises(ValueError, match="2D"):
        gmm_conditional(gm.weights, gm.means, gm.covs, known=2, value=0.0)


def test_imputation_keeps_the_known_part_and_follows_the_conditional():
    gm, vp, n = ring_mixture(8, 3.0, 0.5), VPSDE(), 1000
    g = torch.Generator().manual_seed(0)
    y, known = torch.zeros(n, 2), torch.tensor([True, False])
    y[:, 0] = 2.0
    x = impute(gmm_denoiser(vp, gm.weights, gm.means, gm.covs, "eps"), vp, vp.prior_sample((n, 2), g), y, known, 100,
               generator=g).x  # fmt: skip
    assert torch.equal(x[:, 0], y[:, 0]) and torch.isfinite(x).all()
    w, m, v = gmm_conditional(gm.weights, gm.means, gm.covs, 0, 2.0)
    k = torch.multinomial(w, n, replacement=True, generator=g)
    truth = (m[k] + v[k].sqrt() * torch.randn(n, generator=g))[:, None]
    assert energy_distance(x[:, 1:], truth) < energy_distance(gm.sample(n, g)[:, 1:], truth) / 3
    with pytest.raises(TypeError, match="mask"):
        impute(gmm_denoiser(vp, gm.weights, gm.means, gm.covs), vp, torch.zeros(3, 2), torch.zeros(3, 2), [True], 2)
    with pytest.raises(ValueError, match="y must"):
        impute(gmm_denoiser(vp, gm.weights, gm.means, gm.covs), vp, torch.zeros(3, 2), torch.zeros(2), known, 2)
