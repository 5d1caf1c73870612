"""2D toy densities: shapes, supports, mixture sampling and normalisation, errors."""

import math

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


def test_two_moons_density_normalised_and_matches_samples():
    from lib.data.toy2d import two_moons_log_prob

    g = torch.linspace(-3.5, 3.5, 201, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    p = two_moons_log_prob(torch.stack([xx.ravel(), yy.ravel()], 1), noise=0.1, nodes=256).exp().reshape(201, 201)
    assert float(torch.trapezoid(torch.trapezoid(p, g), g)) == pytest.approx(1.0, abs=1e-4)
    x = two_moons(1000, noise=0.1, generator=torch.Generator().manual_seed(0))
    # the log-likelihood of the samples under the true density beats any shifted copy of it
    assert float(two_moons_log_prob(x, 0.1).mean()) > float(two_moons_log_prob(x + 0.1, 0.1).mean()) + 0.2
    ref = two_moons_log_prob(x[:100], 0.1, nodes=16384)  # quadrature error O(nodes^-2), worst near the ends
    assert torch.allclose(two_moons_log_prob(x[:100], 0.1), ref, atol=1e-4)
    with pytest.raises(ValueError, match="noise"):
        two_moons_log_prob(x, 0.0)
    with pytest.raises(ValueError, match="shape"):
        two_moons_log_prob(torch.zeros(3), 0.1)


def test_checkerboard_density():
    from lib.data.toy2d import checkerboard_log_prob

    x = checkerboard(2000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(checkerboard_log_prob(x), torch.full((2000,), -math.log(8.0), dtype=torch.float64))
    assert checkerboard_log_prob(torch.tensor([[-1.5, -0.5], [3.0, 0.0]])).isinf().all()  # light square, outside
    with pytest.raises(ValueError, match="squares"):
        checkerboard_log_prob(x, squares=3)
