"""SD's scheduler conventions against ``diffusers`` (test-only oracle, BOOK.md rule 14): timesteps, one DDIM step,
one Euler step, and the identity "DDIM = Euler in sigma coordinates"."""

import pytest
import torch

from lib.diffusion.discrete import (
    SDSchedulerConfig,
    euler_discrete,
    euler_sigmas,
    euler_step,
    sd_ddim,
    sd_time_grid,
    sd_timesteps,
    sigma_of,
    timestep_to_time,
    to_sigma_coords,
)
from lib.diffusion.predictions import Denoiser
from lib.diffusion.samplers import ddim

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
          steps_offset=1, timestep_spacing="leading")  # fmt: skip


def _ddim(n, **kw):
    s = diffusers.DDIMScheduler(**{**SD, "clip_sample": False, "set_alpha_to_one": False, **kw})
    s.set_timesteps(n)
    return s


def _euler(n, **kw):
    s = diffusers.EulerDiscreteScheduler(**{**SD, **kw})
    s.set_timesteps(n)
    return s


@pytest.mark.parametrize("n", [1, 7, 20, 50, 333])
def test_timesteps_match_diffusers(n):
    assert torch.equal(sd_timesteps(n), _ddim(n).timesteps)
    assert torch.equal(sd_timesteps(n).float(), _euler(n).timesteps)
    if 1000 % n == 0:
        cfg = SDSchedulerConfig(spacing="trailing")
        assert torch.equal(sd_timesteps(n, cfg), _ddim(n, timestep_spacing="trailing").timesteps)
    assert sd_timesteps(50)[0] == 981 and sd_timesteps(50)[-1] == 1  # SD's 50-step grid


def test_time_grid_reads_alphas_cumprod():
    """alpha(t)^2 on the grid is diffusers' alphas_cumprod at each timestep, then the final alpha_bar_0."""
    n = 20
    d = _ddim(n)
    ts = sd_time_grid(n)
    sch = SDSchedulerConfig().schedule()
    ac = d.alphas_cumprod.double()
    want = torch.cat([ac[d.timesteps], d.final_alpha_cumprod.double().reshape(1)])
    assert ts.shape == (n + 1,) and bool((ts[1:] < ts[:-1]).all())
    assert torch.allclose(sch.alpha(ts) ** 2, want, rtol=1e-5)
    assert float(ts[-1]) == pytest.approx(1e-3)
    assert float(sd_time_grid(n, SDSchedulerConfig(set_alpha_to_one=True))[-1]) == 0.0
    # steps_offset = 0: the last diffusers step is alpha_bar_0 -> alpha_bar_0 (identity), left out of the grid
    ts0 = sd_time_grid(20, SDSchedulerConfig(steps_offset=0))
    assert ts0.shape == (20,) and float(ts0[-1]) == pytest.approx(1e-3)


def _fixed(eps_by_call):
    """A denoiser that returns the given eps tensors in turn and records the inputs it saw."""
    seen = []

    def model(x, t):
        seen.append((x.clone(), t.clone()))
        return eps_by_call[len(seen) - 1]

    return Denoiser(model, "eps"), seen


@pytest.mark.parametrize("i", [0, 9, 19])
def test_one_ddim_step_matches_diffusers(i):
    g = torch.Generator().manual_seed(i)
    n = 20
    d = _ddim(n)
    x = torch.randn(3, 4, 8, 8, generator=g)
    eps = torch.randn(3, 4, 8, 8, generator=g)
    want = d.step(eps, d.timesteps[i], x).prev_sample
    ts = sd_time_grid(n)[i : i + 2]
    den, seen = _fixed([eps])
    got = ddim(den, SDSchedulerConfig().schedule(), x, ts=ts).x
    assert torch.allclose(got, want, atol=2e-5), float((got - want).abs().max())
    assert float(seen[0][1][0] * 1000) == pytest.approx(float(d.timesteps[i]) + 1)  # the net sees t = (k + 1) / N


def test_one_stochastic_ddim_step_matches_diffusers():
    """eta = 1: the same std (diffusers' _get_variance) and the same noise draw."""
    n, i = 20, 5
    g = torch.Generator().manual_seed(1)
    x, e1, e2 = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    d = _ddim(n)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    want = d.step(e1, d.timesteps[i], x, eta=1.0, variance_noise=z).prev_sample
    den, seen = _fixed([e1, e2])  # a 2-step run: its second network input is the first step's output
    ddim(den, SDSchedulerConfig().schedule(), x, eta=1.0, ts=sd_time_grid(n)[i : i + 3],
         generator=torch.Generator().manual_seed(7))  # fmt: skip
    assert torch.allclose(seen[1][0], want, atol=2e-5)


@pytest.mark.parametrize("i", [0, 13, 19])
def test_one_euler_step_matches_diffusers(i):
    n = 20
    e = _euler(n)
    g = torch.Generator().manual_seed(i)
    y = torch.randn(2, 4, 8, 8, generator=g) * e.sigmas[i]
    eps = torch.randn(2, 4, 8, 8, generator=g)
    sig = euler_sigmas(n)
    assert torch.allclose(sig.float(), e.sigmas, rtol=1e-5)
    e._step_index = i  # diffusers steps in order; jump to step i
    k = e.timesteps[i]
    x_in = e.scale_model_input(y, k)
    assert torch.allclose(x_in, y / (1 + sig[i] ** 2).sqrt().float(), rtol=1e-5)
    e._step_index = i
    want = e.step(eps, k, y).prev_sample
    got = euler_step(y, eps, sig[i], sig[i + 1])
    assert torch.allclose(got, want, atol=1e-5)


def test_euler_sampler_matches_diffusers_loop():
    """The whole Euler loop with a fixed nonlinear eps network: diffusers' init, scale_model_input, step, and
    ours (which returns x on the VP scale: y itself at final sigma 0)."""
    net = lambda x, t: torch.tanh(0.7 * x) + 0.1 * t.reshape(-1, 1, 1, 1)
    n = 10
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    e = _euler(n)
    y = x_T * e.init_noise_sigma
    for k in e.timesteps:
        y = e.step(net(e.scale_model_input(y, k), (k + 1).expand(2) / 1000), k, y).prev_sample
    got = euler_discrete(Denoiser(net, "eps"), x_T, n)
    assert got.nfe == n
    assert torch.allclose(got.x, y, atol=5e-5)


def test_ddim_is_euler_in_sigma_coordinates():
    """DDIM on SD's grid = Euler in sigma = sqrt((1 - alpha_bar) / alpha_bar) ending at sigma(alpha_bar_0),
    exactly (float64), for a nonlinear network; and one step checked in y = x / alpha."""
    net = lambda x, t: torch.sin(x) * (1 + t.reshape(-1, 1, 1, 1)) - 0.3 * x
    x_T = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    den = Denoiser(net, "eps")
    a = sd_ddim(den, x_T, 25).x
    b = euler_discrete(den, x_T, 25, final="sigma_min").x
    assert torch.allclose(a, b, atol=1e-12, rtol=0)
    c = euler_discrete(den, x_T, 25).x  # diffusers' default final sigma 0 ends elsewhere
    assert (a - c).abs().max() > 1e-3
    sch = SDSchedulerConfig().schedule()
    t, s = sd_time_grid(25)[3:5]
    x_s = ddim(den, sch, x_T, ts=torch.stack([t, s])).x
    tt = t.expand(3)
    y_s = euler_step(to_sigma_coords(x_T, tt, sch), net(x_T, tt), sigma_of(sch, t), sigma_of(sch, s))
    assert torch.allclose(to_sigma_coords(x_s, s.expand(3), sch), y_s, atol=1e-12)


def test_img2img_start_truncates_the_grid():
    den, seen = _fixed([torch.zeros(1, 4, 8, 8)] * 50)
    out = sd_ddim(den, torch.ones(1, 4, 8, 8), 20, t_start=0.5)
    assert out.nfe == 10 and float(seen[0][1][0]) <= 0.5  # the 10 grid times <= 0.5: 0.452, ..., 0.002


def test_errors():
    with pytest.raises(ValueError, match="num_inference_steps"):
        sd_timesteps(0)
    with pytest.raises(ValueError, match="num_inference_steps"):
        sd_timesteps(1001)
    with pytest.raises(ValueError, match="divide"):
        sd_timesteps(3, SDSchedulerConfig(spacing="trailing"))
    with pytest.raises(ValueError, match="spacing"):
        SDSchedulerConfig(spacing="linspace")
    with pytest.raises(ValueError, match="steps_offset"):
        SDSchedulerConfig(steps_offset=-1)
    with pytest.raises(ValueError, match="steps_offset"):
        sd_timesteps(1, SDSchedulerConfig(steps_offset=1000))
    with pytest.raises(TypeError, match="integer"):
        timestep_to_time(torch.tensor([1.5]))
    with pytest.raises(ValueError, match="lie in"):
        timestep_to_time(torch.tensor([1000]))
    with pytest.raises(ValueError, match="final"):
        euler_sigmas(10, final="one")
    with pytest.raises(ValueError, match="same shape"):
        euler_step(torch.zeros(2, 3), torch.zeros(3, 2), 1.0, 0.5)
    with pytest.raises(TypeError, match="prediction='eps'"):
        euler_discrete(Denoiser(lambda x, t: x, "x0"), torch.zeros(1, 4, 8, 8), 5)
    with pytest.raises(ValueError, match="t_start"):
        sd_ddim(Denoiser(lambda x, t: x), torch.zeros(1, 4, 8, 8), 5, t_start=1e-4)
