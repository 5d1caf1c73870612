"""Stable Diffusion's discrete-time scheduler conventions on the book's continuous-time core: integer timesteps
(``steps_offset``, "leading" spacing, the final alpha), DDIM on that grid, and the Euler-discrete step in
``sigma = sqrt((1 - alpha_bar) / alpha_bar)`` coordinates, which is the same update.

Chapter: "Latent diffusion" (``chapters/latent_diffusion.ipynb``); the core is in :mod:`.schedules` and
:mod:`.samplers`.

A discrete schedule of ``N`` steps has ``alpha_bar_k = prod_{j <= k} (1 - beta_j)`` for integer timesteps
``k = 0..N-1`` (``diffusers``' ``alphas_cumprod[k]``). :class:`~lib.diffusion.schedules.DiscreteSchedule` puts
step ``i = k + 1`` at time ``t = (k + 1) / N``, so ``alpha(t)^2 = alpha_bar_k`` there and the book's samplers run
on the grid :func:`sd_time_grid`. SD's DDIM (``set_alpha_to_one=False``) ends at ``alpha_bar_0``, i.e. ``t = 1/N``.

With ``y = x / alpha`` (the variance-exploding scaling; ``diffusers``' Euler "sample") and ``sigma = s / a``,
``y_t = x_0 + sigma_t eps``, so the probability-flow ODE is ``dy / dsigma = eps_hat`` and one Euler step is
``y_next = y + (sigma_next - sigma) eps_hat``. DDIM's ``x_s = a_s x0_hat + s_s eps_hat`` divided by ``a_s`` is
``x0_hat + sigma_s eps_hat = y_t + (sigma_s - sigma_t) eps_hat``: DDIM *is* Euler in ``sigma`` coordinates
(Song, Meng and Ermon 2021, eq. 14; Karras et al. 2022, section 3).

References: Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models", CVPR 2022 (scaled
linear betas 0.00085..0.012, N = 1000); Song, Meng and Ermon, "DDIM", ICLR 2021; Karras et al., "Elucidating the
Design Space of Diffusion-Based Generative Models", 2022 (Euler in sigma); Lin et al., "Common Diffusion Noise
Schedules and Sample Steps are Flawed", 2024 (leading vs trailing spacing); ``diffusers``' ``DDIMScheduler`` and
``EulerDiscreteScheduler`` (the test oracle, tests/diffusion/test_diffusion_discrete.py).

Glossary
--------
N                num_train_timesteps (1000); ``k`` an integer timestep in ``0..N-1``
n                num_inference_steps; ``step_ratio = N // n``
steps_offset     added to "leading" timesteps (SD: 1, so 50 steps run 981, 961, ..., 1)
alpha_bar        ``alphas_cumprod[k] = alpha(t)^2`` at ``t = (k + 1) / N``
final alpha      ``alpha_bar`` after the last step: ``alpha_bar_0`` (SD, ``set_alpha_to_one=False``) or 1
sigma            ``sqrt((1 - alpha_bar) / alpha_bar) = sigma(t) / alpha(t)``, EDM's noise level
y                ``x / alpha``: the Euler scheduler's sample; the network sees ``y / sqrt(1 + sigma^2) = x``
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lib.diffusion.predictions import Denoiser
from lib.diffusion.samplers import SampleResult, ddim
from lib.diffusion.schedules import DiscreteSchedule, Schedule, bcast, scaled_linear_betas

SPACINGS = ("leading", "trailing")


@dataclass(frozen=True)
class SDSchedulerConfig:
    """Stable Diffusion's scheduler settings (``diffusers``' names); the defaults are SD 1.x/2.x's."""

    num_train_timesteps: int = 1000
    """N, the number of training steps."""
    beta_start: float = 0.00085
    """beta of the first step (scaled linear)."""
    beta_end: float = 0.012
    """beta of the last step (scaled linear)."""
    steps_offset: int = 1
    """Added to every "leading" timestep."""
    spacing: str = "leading"
    """``"leading"`` (SD: ``arange(n) * (N // n) + steps_offset``) or ``"trailing"`` (ends at ``N - 1``)."""
    set_alpha_to_one: bool = False
    """Final alpha_bar 1 (t = 0) instead of alpha_bar_0 (t = 1/N)."""

    def __post_init__(self) -> None:
        if not isinstance(self.num_train_timesteps, int) or self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be an int >= 2, got {self.num_train_timesteps!r}")
        if not isinstance(self.steps_offset, int) or self.steps_offset < 0:
            raise ValueError(f"steps_offset must be a non-negative int, got {self.steps_offset!r}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {SPACINGS}, got {self.spacing!r}")

    def schedule(self) -> DiscreteSchedule:
        """The core's :class:`DiscreteSchedule` with these scaled-linear betas."""
        return DiscreteSchedule(scaled_linear_betas(self.num_train_timesteps, self.beta_start, self.beta_end))


def sd_timesteps(num_inference_steps: int, config: SDSchedulerConfig = SDSchedulerConfig()) -> torch.Tensor:  # noqa: B008
    """The integer timesteps ``(n,)`` (int64, decreasing) a ``diffusers`` scheduler visits.

    "leading": ``arange(n) * (N // n)`` reversed, plus ``steps_offset``; "trailing": ``round(arange(N, 0, -N/n)) - 1``
    (needs ``N % n == 0`` here so that DDIM's ``prev_timestep = k - N // n`` is the next timestep).
    """
    N, n = config.num_train_timesteps, num_inference_steps
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= N:
        raise ValueError(f"num_inference_steps must be an int in [1, {N}], got {n!r}")
    ratio = N // n
    if config.spacing == "leading":
        ks = torch.arange(n, dtype=torch.int64).flip(0) * ratio + config.steps_offset
        if int(ks[0]) >= N:
            raise ValueError(f"steps_offset={config.steps_offset} pushes the first timestep to {int(ks[0])} >= N={N}")
        return ks
    if N % n:
        raise ValueError(f"trailing spacing needs num_inference_steps to divide N={N}, got {n}")
    return torch.arange(N, 0, -ratio, dtype=torch.int64) - 1


def timestep_to_time(k: torch.Tensor | int, num_train_timesteps: int = 1000) -> torch.Tensor:
    """Book time of an integer timestep: ``t = (k + 1) / N`` (float64), where ``alpha(t)^2 = alphas_cumprod[k]``."""
    k = torch.as_tensor(k)
    if k.is_floating_point() or k.is_complex():
        raise TypeError(f"k must hold integer timesteps, got dtype {k.dtype}")
    if bool((k < 0).any()) or bool((k >= num_train_timesteps).any()):
        raise ValueError(f"timesteps must lie in [0, {num_train_timesteps - 1}]")
    return (k.double() + 1) / num_train_timesteps


def sd_time_grid(num_inference_steps: int, config: SDSchedulerConfig = SDSchedulerConfig()) -> torch.Tensor:  # noqa: B008
    """The book's decreasing time grid ``ts (n + 1,)`` (float64) of SD's DDIM: the time of each timestep, then the
    final alpha's time (``1/N``, or ``0`` with ``set_alpha_to_one``). Run it with ``samplers.ddim(..., ts=ts)``.

    With ``steps_offset = 0`` and ``set_alpha_to_one=False`` the last timestep is 0 and ``diffusers``' last step
    goes from ``alpha_bar_0`` to ``alpha_bar_0``, an exact identity; the grid then leaves it out (``n`` times).
    """
    ks = sd_timesteps(num_inference_steps, config)
    ts = timestep_to_time(ks, config.num_train_timesteps)
    t_end = 0.0 if config.set_alpha_to_one else 1.0 / config.num_train_timesteps
    if float(ts[-1]) <= t_end:
        return ts
    return torch.cat([ts, torch.tensor([t_end], dtype=torch.float64)])


def sd_ddim(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    num_inference_steps: int,
    config: SDSchedulerConfig = SDSchedulerConfig(),  # noqa: B008
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    t_start: float | None = None,
) -> SampleResult:
    """DDIM on SD's grid through the core's :func:`~lib.diffusion.samplers.ddim`; ``t_start`` keeps only the grid
    times ``<= t_start`` (img2img / SDEdit: ``x_T`` is then a latent noised to the first kept time)."""
    ts = sd_time_grid(num_inference_steps, config)
    if t_start is not None:
        ts = ts[ts <= t_start + 1e-12]
        if len(ts) < 2:
            raise ValueError(f"t_start={t_start!r} leaves fewer than one step of the grid")
    return ddim(denoiser, config.schedule(), x_T, eta=eta, ts=ts, generator=generator)


# --- Euler in sigma coordinates -----------------------------------------------------------------------------


def sigma_of(schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    """``sigma(t) / alpha(t) = sqrt((1 - alpha_bar) / alpha_bar)`` (EDM's noise level), same shape as ``t``."""
    if not torch.is_tensor(t):
        raise TypeError(f"t must be a tensor, got {type(t).__name__}")
    return schedule.sigma(t) / schedule.alpha(t)


def euler_sigmas(
    num_inference_steps: int,
    config: SDSchedulerConfig = SDSchedulerConfig(),  # noqa: B008
    final: str = "zero",
) -> torch.Tensor:
    """``diffusers``' ``EulerDiscreteScheduler.sigmas`` ``(n + 1,)`` (float64): ``sigma`` at each timestep, then
    ``0`` (``final="zero"``, the default there) or ``sigma`` at ``alpha_bar_0`` (``final="sigma_min"``)."""
    if final not in ("zero", "sigma_min"):
        raise ValueError(f"final must be 'zero' or 'sigma_min', got {final!r}")
    sch = config.schedule()
    ts = timestep_to_time(sd_timesteps(num_inference_steps, config), config.num_train_timesteps)
    last = sigma_of(sch, torch.tensor([1.0 / config.num_train_timesteps], dtype=torch.float64))
    return torch.cat([sigma_of(sch, ts), last if final == "sigma_min" else torch.zeros(1, dtype=torch.float64)])


def euler_step(y: torch.Tensor, eps_hat: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One Euler step of ``dy / dsigma = eps_hat`` in ``y = x / alpha`` coordinates: ``y + (sigma_next - sigma)
    eps_hat`` (``diffusers``' ``(y - x0_hat) / sigma * dt`` with ``x0_hat = y - sigma eps_hat``)."""
    if y.shape != eps_hat.shape:
        raise ValueError(f"y and eps_hat must have the same shape, got {tuple(y.shape)} and {tuple(eps_hat.shape)}")
    return y + (float(sigma_next) - float(sigma)) * eps_hat


@torch.no_grad()
def euler_discrete(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    num_inference_steps: int,
    config: SDSchedulerConfig = SDSchedulerConfig(),  # noqa: B008
    final: str = "zero",
) -> SampleResult:
    """SD's Euler-discrete sampler for an ``eps`` denoiser on the book's ``x`` (VP) scale: ``y = x / alpha``,
    Euler steps in ``sigma``, back to ``x``; the network sees ``x = y / sqrt(1 + sigma^2)``. Returns ``x`` at
    the end (``y`` itself when the final sigma is 0). With ``final="sigma_min"`` it equals :func:`sd_ddim`."""
    if not isinstance(denoiser, Denoiser) or denoiser.prediction != "eps":
        raise TypeError("denoiser must be a lib.diffusion.predictions.Denoiser with prediction='eps'")
    sigmas = euler_sigmas(num_inference_steps, config, final)
    ts = timestep_to_time(sd_timesteps(num_inference_steps, config), config.num_train_timesteps)
    y = x_T * (1 + sigmas[0] ** 2).sqrt().to(x_T.dtype)  # y = x / alpha, 1 / alpha = sqrt(1 + sigma^2)
    for i in range(len(ts)):
        x = y / float((1 + sigmas[i] ** 2).sqrt())  # scale_model_input
        eps = denoiser(x, ts[i].to(x.dtype).expand(x.shape[0]))
        y = euler_step(y, eps, sigmas[i], sigmas[i + 1])
    return SampleResult(y / float((1 + sigmas[-1] ** 2).sqrt()), len(ts))


def to_sigma_coords(x: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """``y = x / alpha(t)`` for ``x (B, ...)`` and ``t (B,)``."""
    return x / bcast(schedule.alpha(t.to(x.dtype)), x)
