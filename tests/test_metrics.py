"""Energy distance, sliced Wasserstein, Frechet distance (closed forms) and the digits classifier."""

import math

import pytest
import torch

from lib.metrics import (
    DigitsClassifierConfig,
    classifier_frechet_distance,
    energy_distance,
    frechet_distance,
    gaussian_fit_samples,
    mean_pairwise_distance,
    sliced_wasserstein,
    train_digits_classifier,
    wilson_interval,
)


def test_energy_distance_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 3, generator=g), torch.randn(200, 3, generator=g) + 0.5
    d = lambda a, b: (a[:, None] - b[None]).norm(dim=-1).double().mean()
    ref = float(2 * d(x, y) - d(x, x) - d(y, y))
    assert energy_distance(x, y) == pytest.approx(ref, rel=1e-6)
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    assert mean_pairwise_distance(x) == pytest.approx(float(d(x, x)), rel=1e-6)
    assert energy_distance(x, y, y_self=mean_pairwise_distance(y)) == pytest.approx(ref, rel=1e-6)


def test_sliced_wasserstein_of_a_shift():
    """Shifting by c gives SW2^2 = E_theta (theta . c)^2 = |c|^2 / d."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4000, 2, generator=g)
    c = torch.tensor([1.0, 2.0])
    sw = sliced_wasserstein(x, x + c, n_projections=2000, generator=g)
    assert sw == pytest.approx(math.sqrt(5.0 / 2), rel=0.05)
    assert sliced_wasserstein(x, x[:3000], generator=g) < 0.05  # different sizes via quantiles


def test_frechet_distance_closed_form():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(200000, 2, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0], dtype=torch.float64)
    b = torch.randn(200000, 2, generator=g, dtype=torch.float64) * torch.tensor([2.0, 2.0], dtype=torch.float64) + 1.0
    # diagonal covariances: |mu|^2 + sum (s_a - s_b)^2 = 2 + 1
    assert frechet_distance(a, b) == pytest.approx(3.0, rel=0.02)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="dimension"):
        frechet_distance(a, b[:, :1])


def test_digits_classifier_smoke():
    trained = train_digits_classifier(DigitsClassifierConfig(channels=4, features=8, steps=20))
    assert 0.0 <= trained.test_accuracy <= 1.0
    x = torch.rand(30, 1, 8, 8) * 2 - 1
    assert trained.model.features(x).shape == (30, 8)
    assert classifier_frechet_distance(x, x, trained.model) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="shape"):
        trained.model.features(torch.zeros(3, 64))


def test_gaussian_fit_samples_reproduce_mean_and_covariance():
    g = torch.Generator().manual_seed(3)
    A = torch.tensor([[1.0, 0.0], [0.8, 0.5]], dtype=torch.float64)
    x = (torch.randn(5000, 2, generator=g, dtype=torch.float64) @ A.T + 2.0).reshape(5000, 1, 2)
    s = gaussian_fit_samples(x, 20000, g, jitter=0.0)
    assert s.shape == (20000, 1, 2) and s.dtype == x.dtype
    assert torch.allclose(torch.cov(s.reshape(-1, 2).T), torch.cov(x.reshape(-1, 2).T), atol=0.03)
    assert torch.allclose(s.mean(0), x.mean(0), atol=0.03)
    with pytest.raises(ValueError, match="x_train"):
        gaussian_fit_samples(torch.zeros(1, 2), 3)
    with pytest.raises(ValueError, match="n must"):
        gaussian_fit_samples(x, 0)


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (71, 134), (600, 600)])
def test_wilson_interval_matches_scipy(k, n):
    from scipy.stats import binomtest

    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson_interval(k, n, z=1.959963984540054)
    assert abs(lo - ref.low) < 1e-9 and abs(hi - ref.high) < 1e-9
    assert lo <= k / n <= hi


def test_wilson_interval_errors():
    for k, n in ((5, 3), (-1, 3), (1, 0), (1.0, 3)):
        with pytest.raises(ValueError, match="k="):
            wilson_interval(k, n)
    with pytest.raises(ValueError, match="z must"):
        wilson_interval(1, 3, z=0.0)
