"""Sampling grids (uniform, EDM rho, uniform log-SNR, shifted) and training-time samplers against their
definitions and distributions."""

import math

import numpy as np
import pytest
import torch

from lib.diffusion.schedules import VPSDE, RectifiedFlow
from lib.diffusion.timesteps import GRIDS, T_SAMPLERS, TimeSampler, shift_time, time_grid


@pytest.mark.parametrize("kind", GRIDS)
def test_grids(kind):
    sch = VPSDE()
    ts = time_grid(20, kind, sch, t_max=1.0, t_min=1e-3, dtype=torch.float64)
    assert ts.shape == (21,) and (ts[1:] < ts[:-1]).all()
    if kind != "shifted":
        assert float(ts[0]) == 1.0 and float(ts[-1]) == pytest.approx(1e-3)
    if kind == "uniform":
        assert torch.allclose(ts.diff(), torch.full((20,), -(1 - 1e-3) / 20, dtype=torch.float64))
    if kind == "logsnr":
        assert torch.allclose(sch.log_snr(ts).diff(), sch.log_snr(ts).diff()[:1].expand(20), rtol=1e-9)
    if kind == "edm":  # uniform in (sigma/alpha)^(1/7)
        s = torch.exp(-sch.log_snr(ts) / 2) ** (1 / 7)
        assert torch.allclose(s.diff(), s.diff()[:1].expand(20), rtol=1e-8)
    if kind == "shifted":
        assert torch.allclose(ts, shift_time(torch.linspace(1.0, 1e-3, 21, dtype=torch.float64), 3.0))


def test_shift_and_rf_log_snr_grid():
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    assert torch.allclose(shift_time(t, 3.0), torch.tensor([0.0, 0.75, 1.0], dtype=torch.float64))
    assert torch.allclose(shift_time(t, 1.0), t)
    rf = RectifiedFlow()
    ts = time_grid(10, "logsnr", rf, t_max=0.999, t_min=0.001, dtype=torch.float64)
    assert torch.allclose(ts, torch.flip(1 - ts, [0]), atol=1e-12)  # lambda(1 - t) = -lambda(t): symmetric
    with pytest.raises(ValueError, match="log-SNR"):
        time_grid(10, "logsnr", rf)  # lambda(1) = -inf
    with pytest.raises(ValueError, match="schedule"):
        time_grid(10, "edm")
    with pytest.raises(ValueError, match="steps"):
        time_grid(0)
    with pytest.raises(ValueError, match="t_min"):
        time_grid(5, t_min=0.5, t_max=0.2)
    assert float(time_grid(4, t_min=0.0)[-1]) == 0.0


def test_time_samplers_follow_their_laws():
    g, n = torch.Generator().manual_seed(0), 200000
    u = TimeSampler("uniform", t_min=0.1, t_max=0.5)(n, g, dtype=torch.float64)
    assert 0.1 <= float(u.min()) and float(u.max()) <= 0.5 and abs(float(u.mean()) - 0.3) < 2e-3
    ln = TimeSampler("logit_normal", m=0.5, s=0.8, t_min=0.0)(n, g, dtype=torch.float64)
    logit = torch.log(ln) - torch.log1p(-ln)
    assert abs(float(logit.mean()) - 0.5) < 0.01 and abs(float(logit.std()) - 0.8) < 0.01
    # density integrates to one and matches a histogram
    sampler = TimeSampler("logit_normal", m=0.0, s=1.0, t_min=0.0)
    grid = torch.linspace(1e-4, 1 - 1e-4, 20001, dtype=torch.float64)
    assert float(torch.trapezoid(sampler.density(grid), grid)) == pytest.approx(1.0, abs=1e-3)
    x = sampler(n, g, dtype=torch.float64)
    frac = float(((x > 0.4) & (x < 0.6)).double().mean())
    mask = (grid > 0.4) & (grid < 0.6)
    assert frac == pytest.approx(float(torch.trapezoid(sampler.density(grid[mask]), grid[mask])), abs=5e-3)
    # mode sampling with s = 0 is uniform; s > 0 puts more mass in the middle
    m0 = TimeSampler("mode", s=0.0, t_min=0.0)(n, g, dtype=torch.float64)
    m1 = TimeSampler("mode", s=1.29, t_min=0.0)(n, g, dtype=torch.float64)
    mid = lambda z: float(((z > 0.3) & (z < 0.7)).double().mean())
    assert abs(mid(m0) - 0.4) < 5e-3 and mid(m1) > mid(m0) + 0.05
    cm = TimeSampler("cosmap", t_min=0.0)(n, g, dtype=torch.float64)  # t = 1 - 1/(tan(pi u/2) + 1): median at u=1/2
    assert abs(float(cm.median()) - 0.5) < 5e-3
    edm = TimeSampler("edm", m=-1.2, s=1.2, t_min=0.0, schedule=VPSDE())(n, g, dtype=torch.float64)
    log_noise = -VPSDE().log_snr(edm) / 2  # ln(sigma/alpha) ~ N(-1.2, 1.2)
    assert abs(float(log_noise.mean()) + 1.2) < 0.02 and abs(float(log_noise.std()) - 1.2) < 0.02
    assert set(T_SAMPLERS) == {"uniform", "logit_normal", "mode", "cosmap", "edm"}


def test_time_sampler_errors():
    with pytest.raises(ValueError, match="kind"):
        TimeSampler("beta")
    with pytest.raises(ValueError, match="schedule"):
        TimeSampler("edm")
    with pytest.raises(ValueError, match="mode"):
        TimeSampler("mode", s=5.0)
    with pytest.raises(ValueError, match="t_min"):
        TimeSampler(t_min=0.5, t_max=0.5)
    with pytest.raises(ValueError, match="n must"):
        TimeSampler()(0)
    with pytest.raises(TypeError, match="floating-point"):
        TimeSampler("cosmap").density(torch.tensor([1, 2]))
    assert math.isclose(float(TimeSampler("uniform", t_min=0.0).density(torch.tensor([0.3]))), 1.0)


def _ks_statistic(samples: torch.Tensor, sampler: TimeSampler) -> float:
    """sup_t |empirical CDF - CDF| with the CDF integrated from ``sampler.density`` (trapezoid, fine grid)."""
    grid = torch.linspace(1e-6, 1 - 1e-6, 50001, dtype=torch.float64)
    pdf = sampler.density(grid)
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumulative_trapezoid(pdf, grid)])
    x = samples.double().sort().values
    F = torch.from_numpy(np.interp(x.numpy(), grid.numpy(), cdf.numpy()))
    n = len(x)
    ecdf_hi, ecdf_lo = torch.arange(1, n + 1, dtype=torch.float64) / n, torch.arange(n, dtype=torch.float64) / n
    return float(torch.maximum((ecdf_hi - F).abs(), (F - ecdf_lo).abs()).max())


SAMPLERS = {
    "uniform": TimeSampler("uniform", t_min=0.0),
    "logit_normal(0, 1)": TimeSampler("logit_normal", t_min=0.0),
    "logit_normal(0.5, 0.6)": TimeSampler("logit_normal", m=0.5, s=0.6, t_min=0.0),
    "mode(1.29)": TimeSampler("mode", s=1.29, t_min=0.0),
    "mode(-0.5)": TimeSampler("mode", s=-0.5, t_min=0.0),
    "cosmap": TimeSampler("cosmap", t_min=0.0),
    "edm(-1.2, 1.2) on rf": TimeSampler("edm", m=-1.2, s=1.2, t_min=0.0, schedule=RectifiedFlow()),
    "edm(-1.2, 1.2) on vp": TimeSampler("edm", m=-1.2, s=1.2, t_min=0.0, schedule=VPSDE()),
}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_time_sampler_densities_pass_a_kolmogorov_smirnov_test(name):
    """Each density integrates to 1 and its CDF matches 20000 draws: KS statistic below the 1% critical value
    1.63 / sqrt(n) = 0.0115; the same draws against a wrong density fail by a wide margin."""
    sampler, n = SAMPLERS[name], 20000
    grid = torch.linspace(1e-6, 1 - 1e-6, 50001, dtype=torch.float64)
    assert float(torch.trapezoid(sampler.density(grid), grid)) == pytest.approx(1.0, abs=2e-3)
    x = sampler(n, torch.Generator().manual_seed(1), dtype=torch.float64)
    assert _ks_statistic(x, sampler) < 1.63 / math.sqrt(n)
    wrong = TimeSampler("mode", s=0.8, t_min=0.0) if sampler.kind != "mode" else TimeSampler("cosmap", t_min=0.0)
    assert _ks_statistic(x, wrong) > 0.03


def test_sd3_closed_form_densities():
    """SD3 (Esser et al. 2024, section 3.1): pi_CosMap(t) = 2 / (pi - 2 pi t + 2 pi t^2); mode sampling with s = 0 is
    uniform; F(1/2) = 1/2, so pi_mode(1/2) = 1 / |F'(1/2)| = 1 / (1 + s - s pi / 2)."""
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(TimeSampler("cosmap").density(t), 2 / (math.pi - 2 * math.pi * t + 2 * math.pi * t**2))
    torch.testing.assert_close(TimeSampler("mode", s=0.0).density(t), torch.ones(3, dtype=torch.float64))
    s = 1.29
    mid = float(TimeSampler("mode", s=s).density(torch.tensor([0.5], dtype=torch.float64)))
    assert mid == pytest.approx(1 / (1 + s - s * math.pi / 2), rel=1e-9)
    assert float(TimeSampler("uniform", t_min=0.2, t_max=0.7).density(torch.tensor([0.1]))) == 0.0


def _ks_two_sample(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs of ``a`` and ``b``."""
    a, b = a.double().sort().values, b.double().sort().values
    grid = torch.cat([a, b])
    cdf = lambda x: torch.searchsorted(x, grid, right=True).double() / len(x)  # noqa: E731
    return float((cdf(a) - cdf(b)).abs().max())


def test_time_samplers_match_diffusers_sd3_training_sampler():
    """Oracle: SD3's training-time samplers as `diffusers` implements them (test-only dependency). diffusers draws
    u and maps it to a training index, sigma ~ 1 - u; the logit-normal(0, s) and mode densities are symmetric
    about 1/2 (for mode, F(1 - u) = 1 - F(u)), so t and 1 - t have one law and the samples compare directly."""
    from diffusers import training_utils

    n, g = 100_000, torch.Generator().manual_seed(0)
    critical = 1.95 * math.sqrt(2 / n)  # two-sample KS at alpha = 0.001
    cases = [
        ("logit_normal", {"logit_mean": 0.0, "logit_std": 1.0}, TimeSampler("logit_normal", m=0.0, s=1.0, t_min=0.0)),
        ("mode", {"mode_scale": 1.29}, TimeSampler("mode", s=1.29, t_min=0.0)),
        ("none", {}, TimeSampler("uniform", t_min=0.0)),
    ]
    for scheme, kw, ours in cases:
        ref = training_utils.compute_density_for_timestep_sampling(scheme, n, generator=g, **kw)
        assert _ks_two_sample(ours(n, generator=g, dtype=torch.float64), ref) < critical, scheme
    # the statistic can fail: mode with another scale is told apart from the reference
    ref = training_utils.compute_density_for_timestep_sampling("mode", n, mode_scale=1.29, generator=g)
    assert _ks_two_sample(TimeSampler("mode", s=0.5, t_min=0.0)(n, generator=g), ref) > 5 * critical
