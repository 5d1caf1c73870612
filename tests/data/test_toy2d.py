"""2D toy densities: shapes, supports, mixture sampling and normalisation, errors."""

import pytest
import torch

from lib.data.toy2d import GaussianMixture, checkerboard, ring_mixture, sample_toy, two_moons


def test_mixture_sample_and_density():
    gm = ring_mixture(4, radius=3.0, std=0.4, dtype=torch.float64)
    x = gm.sample(20000, torch.Generator().manual_seed(0))
    assert x.shape == (20000, 2)
    assert torch.allclose(x.mean(0), torch.zeros(2, dtype=torch.float64), atol=0.06)
    assert float(x.norm(dim=1).mean()) == pytest.approx(3.0, abs=0.1)
    g = torch.linspace(-6, 6, 401, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    p = gm.log_prob(torch.stack([xx.ravel(), yy.ravel()], 1)).exp().reshape(401, 401)
    assert float(torch.trapezoid(torch.trapezoid(p, g), g)) == pytest.approx(1.0, abs=1e-4)


def test_toys():
    gen = torch.Generator().manual_seed(0)
    cb = checkerboard(5000, generator=gen)
    cell = torch.floor((cb + 2.0) / 1.0).long()
    assert ((cell.sum(1) % 2) == 0).all() and cb.abs().max() <= 2.0
    m = two_moons(3000, generator=gen)
    assert m.shape == (3000, 2) and m.abs().mean(0).max() < 2
    for name in ("moons", "checkerboard", "rings"):
        assert sample_toy(name, 10, gen).shape == (10, 2)


def test_errors():
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.tensor([0.5, 0.6]), torch.zeros(2, 2), torch.eye(2).expand(2, 2, 2))
    with pytest.raises(ValueError, match="covs"):
        GaussianMixture(torch.tensor([1.0]), torch.zeros(1, 2), torch.eye(3)[None])
    with pytest.raises(ValueError, match="squares"):
        checkerboard(10, squares=3)
    with pytest.raises(ValueError, match="name"):
        sample_toy("spiral", 10)
