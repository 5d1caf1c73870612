"""Tests for lib/rl/noise.py: OU autocorrelation and variance against the closed forms, resets, warm-up."""

import numpy as np
import pytest
import torch

from lib.rl.noise import GaussianNoise, OUNoise, ou_autocorrelation, ou_stationary_std


def test_ou_autocorrelation_and_std_match_closed_form():
    theta, sigma = 0.15, 0.2
    noise = OUNoise([-1.0], [1.0], num_envs=64, theta=theta, sigma=sigma, generator=torch.Generator().manual_seed(0))
    for _ in range(100):  # burn in to the stationary regime: 0.85^100 ~ 1e-7
        noise.sample()
    x = torch.stack([noise.sample()[:, 0] for _ in range(4000)]).double().numpy()  # (T, 64)
    assert abs(x.std() - ou_stationary_std(theta, sigma, 1.0)) < 0.02 * ou_stationary_std(theta, sigma, 1.0)
    x = x - x.mean()
    for lag in (1, 5, 10):
        rho = (x[:-lag] * x[lag:]).mean() / (x * x).mean()
        assert abs(rho - ou_autocorrelation(theta, 1.0, lag)) < 0.02
    assert abs(ou_stationary_std(0.15, 0.2, 1.0) - 0.2 / np.sqrt(1 - 0.85**2)) < 1e-12


def test_gaussian_noise_is_uncorrelated_and_scaled_by_the_half_range():
    noise = GaussianNoise([-2.0], [2.0], num_envs=1000, sigma=0.1, generator=torch.Generator().manual_seed(1))
    a = torch.zeros(1000, 1)
    x = torch.stack([noise(a)[:, 0] for _ in range(20)]).double()  # (20 steps, 1000 envs)
    assert abs(x.std().item() - 0.2) < 0.01  # sigma * scale = 0.1 * 2
    assert abs(np.corrcoef(x[:-1].flatten(), x[1:].flatten())[0, 1]) < 0.03


def test_ou_reset_zeroes_only_finished_envs_and_warmup_is_uniform():
    noise = OUNoise([-1.0, 0.0], [1.0, 4.0], num_envs=3, warmup_steps=500, generator=torch.Generator().manual_seed(2))
    a = torch.zeros(3, 2)
    warm = torch.stack([noise(a) for _ in range(500)])  # (500, 3, 2) uniform in the box
    assert (warm[..., 0] >= -1).all() and (warm[..., 0] <= 1).all() and (warm[..., 1] >= 0).all()
    assert abs(warm[..., 1].mean().item() - 2.0) < 0.15 and noise.x.abs().sum() == 0  # OU untouched in warm-up
    noise(a)
    assert (noise.x != 0).all()
    noise.reset(np.array([True, False, True]))
    assert (noise.x[[0, 2]] == 0).all() and (noise.x[1] != 0).all()


def test_noise_errors():
    with pytest.raises(ValueError, match="low and high"):
        GaussianNoise([1.0], [-1.0])
    with pytest.raises(ValueError, match="low and high"):
        GaussianNoise([-np.inf], [1.0])
    with pytest.raises(ValueError, match="theta"):
        OUNoise([-1.0], [1.0], theta=3.0)
    with pytest.raises(ValueError, match="sigma"):
        GaussianNoise([-1.0], [1.0], sigma=-0.1)
    with pytest.raises(ValueError, match="warmup_steps"):
        GaussianNoise([-1.0], [1.0], warmup_steps=-1)
    with pytest.raises(ValueError, match="action"):
        GaussianNoise([-1.0], [1.0], num_envs=2)(torch.zeros(1, 1))
    with pytest.raises(ValueError, match="done"):
        OUNoise([-1.0], [1.0], num_envs=2).reset(np.array([True]))
