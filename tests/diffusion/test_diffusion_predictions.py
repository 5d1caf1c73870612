"""Prediction converters: every pair round-trips in float64 on every schedule; no vanishing division where the
prediction carries the information (v, velocity at alpha = 0); the Denoiser wrapper; errors."""

import itertools

import pytest
import torch

from lib.diffusion.predictions import PREDICTIONS, Denoiser, convert, from_x0_eps, to_x0_eps
from lib.diffusion.schedules import VESDE, VPSDE, CosineSchedule, DiscreteSchedule, RectifiedFlow, SubVPSDE, bcast

ALL = [VPSDE(), SubVPSDE(), VESDE(0.05, 5.0), CosineSchedule(), RectifiedFlow(), DiscreteSchedule()]


def _sample(sch, t, seed=3):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(len(t), 1, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(len(t), 1, 4, 4, generator=g, dtype=torch.float64)
    return x0, eps, bcast(sch.alpha(t), x0) * x0 + bcast(sch.sigma(t), x0) * eps


@pytest.mark.parametrize("sch", ALL, ids=lambda s: type(s).__name__)
def test_every_pair_round_trips(sch):
    t = torch.rand(8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.9 + 0.05
    x0, eps, x_t = _sample(sch, t)
    a, s = bcast(sch.alpha(t), x0), bcast(sch.sigma(t), x0)
    da, ds = bcast(sch.d_alpha(t), x0), bcast(sch.d_sigma(t), x0)
    truth = {"eps": eps, "x0": x0, "score": -eps / s, "v": a * eps - s * x0, "velocity": da * x0 + ds * eps}
    for p in PREDICTIONS:
        assert torch.allclose(from_x0_eps(x0, eps, x_t, t, sch, p), truth[p], rtol=1e-12, atol=1e-12)
        x0_b, eps_b = to_x0_eps(truth[p], x_t, t, sch, p)
        assert torch.allclose(x0_b, x0, rtol=1e-9, atol=1e-9) and torch.allclose(eps_b, eps, rtol=1e-9, atol=1e-9)
    for src, dst in itertools.product(PREDICTIONS, repeat=2):
        assert torch.allclose(convert(truth[src], x_t, t, sch, src, dst), truth[dst], rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("sch", [RectifiedFlow(), CosineSchedule()], ids=["RF", "cosine"])
def test_finite_at_alpha_zero(sch):
    """At t = 1 (alpha = 0) v and velocity still determine x0 and eps exactly; eps alone cannot."""
    t = torch.ones(4, dtype=torch.float64)
    x0, eps, x_t = _sample(sch, t)
    for p in ("v", "velocity", "x0"):
        x0_b, eps_b = to_x0_eps(from_x0_eps(x0, eps, x_t, t, sch, p), x_t, t, sch, p)
        assert torch.allclose(x0_b, x0, atol=1e-9) and torch.allclose(eps_b, eps, atol=1e-9)
    assert not torch.allclose(to_x0_eps(eps, x_t, t, sch, "eps")[0], x0, atol=1e-3)  # nan (RF) or rounding noise
    if isinstance(sch, RectifiedFlow):
        assert torch.allclose(from_x0_eps(x0, eps, x_t, t, sch, "velocity"), eps - x0)  # u = eps - x0


def test_denoiser_wrapper_and_errors():
    sch, calls = VPSDE(), {}

    def model(x, t, y=None):
        calls["y"] = y
        return 0.5 * x

    den = Denoiser(model, "eps", y=torch.tensor([1, 2]))
    x, t = torch.randn(2, 3, dtype=torch.float64), torch.full((2,), 0.4, dtype=torch.float64)
    assert torch.equal(den(x, t), 0.5 * x) and torch.equal(calls["y"], torch.tensor([1, 2]))
    x0, eps = den.x0_eps(x, t, sch)
    assert torch.allclose(den.velocity(x, t, sch), bcast(sch.d_alpha(t), x) * x0 + bcast(sch.d_sigma(t), x) * eps)
    assert torch.allclose(den.score(x, t, sch), -0.5 * x / bcast(sch.sigma(t), x))
    assert torch.equal(Denoiser(model, "velocity").velocity(x, t, sch), 0.5 * x)  # passed through, no conversion
    with pytest.raises(ValueError, match="prediction"):
        Denoiser(model, "noise")
    with pytest.raises(TypeError, match="model"):
        Denoiser(None)
    with pytest.raises(ValueError, match="src"):
        convert(x, x, t, sch, "noise", "eps")
    with pytest.raises(TypeError, match="schedule"):
        to_x0_eps(x, x, t, "vp", "eps")
