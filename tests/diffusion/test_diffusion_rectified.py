"""lib/diffusion/rectified.py: SD3's formulations as weighted eps-losses (on random tensors and through the core's
DiffusionLoss), the paper's log-SNR weights, the resolution shift, and SD3's grid and Euler step against diffusers'
FlowMatchEulerDiscreteScheduler (test-only oracle)."""

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_loss_weighting_for_sd3

from lib.diffusion.loss import DiffusionLoss
from lib.diffusion.predictions import Denoiser, to_x0_eps
from lib.diffusion.rectified import (
    FORMULATIONS,
    Formulation,
    d_log_snr,
    flow_match_grid,
    formulation,
    resolution_shift,
)
from lib.diffusion.samplers import euler
from lib.diffusion.schedules import VPSDE, RectifiedFlow
from lib.diffusion.timesteps import TimeSampler, shift_time

F64 = torch.float64


def _model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed, non-trivial "network": some function of (x_t, t) that is not the truth."""
    return torch.tanh(0.7 * x_t.flip(-1)) + t.reshape(-1, *[1] * (x_t.dim() - 1)) * x_t.roll(1, -1)


def test_rf_velocity_loss_is_the_eps_loss_weighted_by_one_over_one_minus_t_squared():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(64, 3, 5, generator=g, dtype=F64), torch.randn(64, 3, 5, generator=g, dtype=F64)
    t = torch.rand(64, generator=g, dtype=F64) * 0.98 + 0.01
    tb = t[:, None, None]
    x_t = (1 - tb) * x0 + tb * eps
    u = torch.randn(64, 3, 5, generator=g, dtype=F64)  # any velocity prediction
    _, eps_hat = to_x0_eps(u, x_t, t, RectifiedFlow(), "velocity")  # eps_hat = x_t + (1 - t) u
    torch.testing.assert_close(eps_hat, x_t + (1 - tb) * u)
    v_err = (u - (eps - x0)).pow(2).sum((1, 2))
    eps_err = (eps_hat - eps).pow(2).sum((1, 2))
    torch.testing.assert_close(v_err, eps_err / (1 - t) ** 2, rtol=1e-10, atol=0)
    # the paper's form -1/2 w_t lambda'_t with w_t = t / (1 - t) is the same weight
    lam_prime = d_log_snr(RectifiedFlow(), t)
    torch.testing.assert_close(-0.5 * (t / (1 - t)) * lam_prime, 1 / (1 - t) ** 2, rtol=1e-12, atol=0)
    # and through the core's loss, same draws: velocity loss == eps-target loss with weight 1/(1 - t)^2
    batch = torch.randn(32, 2, 4, 4, generator=g)
    v_loss = DiffusionLoss(RectifiedFlow(), "velocity", generator=torch.Generator().manual_seed(5))
    e_loss = DiffusionLoss(RectifiedFlow(), "velocity", target="eps", weighting=lambda s: 1 / (1 - s) ** 2,
                           generator=torch.Generator().manual_seed(5))  # fmt: skip
    assert float(v_loss(_model, batch)) == pytest.approx(float(e_loss(_model, batch)), rel=1e-5)


@pytest.mark.parametrize("kind", FORMULATIONS)
def test_every_formulation_is_a_weighted_eps_loss(kind):
    """The formulation's loss (its prediction, weighting and time sampler) equals, draw for draw, the eps-space loss
    with weight omega(t) = eps_weight(t); with omega = 1 instead it differs (except for eps-prediction)."""
    f = formulation(kind)
    batch = torch.randn(48, 2, 4, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    own = f.loss(generator=torch.Generator().manual_seed(7))(_model, batch)
    as_eps = DiffusionLoss(f.schedule, f.prediction, target="eps", weighting=f.eps_weight, t_sampler=f.t_sampler,
                           generator=torch.Generator().manual_seed(7))(_model, batch)  # fmt: skip
    assert float(own) == pytest.approx(float(as_eps), rel=1e-9)
    plain = DiffusionLoss(f.schedule, f.prediction, target="eps", t_sampler=f.t_sampler,
                          generator=torch.Generator().manual_seed(7))(_model, batch)  # fmt: skip
    assert (float(plain) == pytest.approx(float(own), rel=1e-9)) == kind.startswith("eps/")


def test_the_papers_log_snr_weights():
    """Esser et al. section 3.1: w^RF = t / (1 - t) (times pi(t) for a non-uniform sampler), cosine-eps
    w = sech(lambda / 2), cosine-v w = exp(-lambda / 2), EDM w = N(lambda; -2 P_m, (2 P_s)^2) (exp(-lambda) + 1/4),
    each up to a constant factor."""
    t = torch.linspace(0.02, 0.97, 40, dtype=F64)
    torch.testing.assert_close(formulation("rf/uniform", t_min=0.0).log_snr_weight(t), t / (1 - t))
    ln = formulation("rf/lognorm", m=0.5, s=0.7, t_min=0.0)
    torch.testing.assert_close(ln.log_snr_weight(t), t / (1 - t) * ln.t_sampler.density(t))

    def proportional(a, b):
        r = a / b
        torch.testing.assert_close(r, r[:1].expand_as(r), rtol=1e-9, atol=0)

    lam = lambda f: f.schedule.log_snr(t)
    f = formulation("eps/cosine")
    proportional(f.log_snr_weight(t), 1 / torch.cosh(lam(f) / 2))
    f = formulation("v/cosine")
    proportional(f.log_snr_weight(t), torch.exp(-lam(f) / 2))
    f = formulation("edm", m=-1.2, s=1.2)
    gauss = torch.exp(-0.5 * ((lam(f) - 2.4) / 2.4) ** 2)
    proportional(f.log_snr_weight(t), gauss * (torch.exp(-lam(f)) + 0.25))
    # the check can fail: EDM's weight is not rectified flow's
    with pytest.raises(AssertionError):
        proportional(f.log_snr_weight(t), t / (1 - t))
    # eps on LDM's linear table: omega = 1, so w = 2 pi / |lambda'|
    f = formulation("eps/linear", t_min=0.0)
    torch.testing.assert_close(f.log_snr_weight(t), 2 / d_log_snr(f.schedule, t).abs())


def test_cosmap_sampling_is_diffusers_cosmap_weighting():
    """Sampling t from pi is weighting a uniform-t loss by pi: diffusers' SD3 cosmap weighting is our density."""
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float32)
    ref = compute_loss_weighting_for_sd3("cosmap", sigmas=t)
    torch.testing.assert_close(TimeSampler("cosmap").density(t), ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("m,n", [(256, 64), (64, 256), (400, 25)])
def test_resolution_shift_equalises_the_snr_of_the_image_mean(m, n):
    """A constant image of n pixels seen as x_t = (1 - t) c + t eps: its pixel mean has log-SNR lambda(t) + log n.
    t' = shift_time(t, sqrt(m / n)) gives m pixels the same log-SNR; in closed form and by simulation."""
    rf, alpha = RectifiedFlow(), resolution_shift(m, n)
    t = torch.linspace(0.05, 0.95, 19, dtype=F64)
    torch.testing.assert_close(rf.log_snr(shift_time(t, alpha)) + math.log(m), rf.log_snr(t) + math.log(n))
    g, c = torch.Generator().manual_seed(0), 0.8
    snr = []
    for pixels, time in ((n, 0.3), (m, float(shift_time(torch.tensor(0.3, dtype=F64), alpha)))):
        means = ((1 - time) * c + time * torch.randn(5000, pixels, generator=g, dtype=F64)).mean(1)
        snr.append(float(means.mean() ** 2 / means.var()))
    assert snr[0] / snr[1] == pytest.approx(1.0, abs=0.1)
    # without the shift the larger image is far less noisy at the same t
    same_t = ((1 - 0.3) * c + 0.3 * torch.randn(5000, m, generator=g, dtype=F64)).mean(1)
    assert abs(math.log(float(same_t.mean() ** 2 / same_t.var()) / snr[0]) - math.log(m / n)) < 0.1
    assert resolution_shift(1024**2, 256**2) == 4.0


@pytest.mark.parametrize("steps", [2, 5, 10, 28])
@pytest.mark.parametrize("shift", [1.0, 3.0, 0.5])
def test_grid_matches_diffusers_flow_match_euler(steps, shift):
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    sched.set_timesteps(steps)
    ours = flow_match_grid(steps, shift)
    assert ours.shape == (steps + 1,)
    torch.testing.assert_close(ours, sched.sigmas, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours[:-1] * 1000, sched.timesteps, rtol=1e-5, atol=1e-4)


def test_euler_sampling_matches_diffusers_step_by_step():
    """lib's Euler sampler with a velocity denoiser on SD3's grid == diffusers' FlowMatchEulerDiscreteScheduler loop."""
    steps, shift = 8, 3.0
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    sched.set_timesteps(steps)
    x_T = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    velocity = lambda x, t: torch.tanh(x) * t.reshape(-1, 1, 1, 1) - 0.5 * x.roll(1, -1)
    x = x_T.clone()
    first = None
    for ts in sched.timesteps:
        x = sched.step(velocity(x, (ts / 1000).expand(3)), ts, x).prev_sample
        first = x.clone() if first is None else first
    grid = flow_match_grid(steps, shift)
    one = euler(Denoiser(velocity, "velocity"), RectifiedFlow(), x_T, ts=grid[:2])
    torch.testing.assert_close(one.x, first, rtol=1e-5, atol=1e-5)  # one step
    out = euler(Denoiser(velocity, "velocity"), RectifiedFlow(), x_T, ts=grid)
    assert out.nfe == steps
    torch.testing.assert_close(out.x, x, rtol=1e-4, atol=1e-4)


def test_errors():
    with pytest.raises(ValueError, match="kind must be one of"):
        formulation("rf/beta")
    with pytest.raises(ValueError, match="prediction"):
        Formulation("x", RectifiedFlow(), "noise", TimeSampler())
    with pytest.raises(TypeError, match="t_sampler"):
        Formulation("x", RectifiedFlow(), "eps", "uniform")
    with pytest.raises(TypeError, match="schedule"):
        d_log_snr("rf", torch.rand(3))
    with pytest.raises(ValueError, match="steps"):
        flow_match_grid(1)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        flow_match_grid(4, num_train_timesteps=1)
    with pytest.raises(ValueError, match="positive"):
        resolution_shift(0, 4)
    assert torch.all(d_log_snr(VPSDE(), torch.linspace(0.1, 0.9, 5)) < 0)
