"""Guidance with exact scores: Bayes' rule on scores to float64 precision, classifier guidance = classifier-free
guidance with exact models, the w vs s = 1 + w conventions against diffusers' guider, w = 0 is conditional sampling
with the same noise, the tilted density on a grid, guided samples that are not the tilted density, errors."""

import math

import pytest
import torch

from lib.diffusion.classifier import classifier_guided_denoiser
from lib.diffusion.guidance import combine, guidance_scale, guided_denoiser
from lib.diffusion.predictions import Denoiser
from lib.diffusion.samplers import ddpm_ancestral, heun
from lib.diffusion.schedules import VPSDE
from lib.diffusion.tilted import (
    LabelledMixture,
    MixtureClassifier,
    class_denoiser,
    class_log_posterior,
    class_score,
    classifier_grad,
    grid_mass,
    guided,
    ks_1d,
    noised_density_1d,
    sample_grid,
    tilted_log_density,
)

D = torch.float64


def _mix2d() -> LabelledMixture:
    """Six anisotropic components on a ring, three classes of two components with unequal weights."""
    ang = torch.arange(6, dtype=D) * math.pi / 3
    means = 2.0 * torch.stack([ang.cos(), ang.sin()], 1)
    a = torch.tensor([[0.5, 0.1], [0.0, 0.3]], dtype=D)
    covs = torch.stack([a @ a.T * (1 + 0.2 * k) for k in range(6)])
    w = torch.tensor([0.3, 0.15, 0.15, 0.1, 0.15, 0.15], dtype=D)
    return LabelledMixture(w, means, covs, torch.tensor([0, 1, 2, 0, 1, 2]))


def _mix1d() -> LabelledMixture:
    return LabelledMixture(torch.tensor([0.5, 0.5], dtype=D), torch.tensor([[-1.0], [1.0]], dtype=D),
                           torch.full((2, 1, 1), 0.25, dtype=D), torch.tensor([0, 1]))  # fmt: skip


def test_bayes_rule_on_scores_to_float64_precision():
    """grad log p_t(x) + grad log p_t(y | x) = grad log p_t(x | y), every class, small to large t; the closed-form
    classifier gradient is also the autograd gradient of log p_t(y | x)."""
    mix, sde, g = _mix2d(), VPSDE(), torch.Generator().manual_seed(0)
    x = 3 * torch.randn(200, 2, generator=g, dtype=D)
    for t in (1e-3, 0.05, 0.3, 0.7, 1.0):
        for y in range(3):
            cond = class_score(x, t, sde, mix, y)
            err = (class_score(x, t, sde, mix, None) + classifier_grad(x, t, sde, mix, y) - cond).abs().max()
            assert err < 1e-12 * (1 + cond.abs().max()), (t, y, float(err))
            xr = x.clone().requires_grad_(True)
            auto = torch.autograd.grad(class_log_posterior(xr, t, sde, mix)[:, y].sum(), xr)[0]
            assert torch.allclose(auto, classifier_grad(x, t, sde, mix, y), atol=1e-10)
    post = class_log_posterior(x, 0.3, sde, mix).exp()
    assert torch.allclose(post.sum(1), torch.ones(200, dtype=D), atol=1e-12)
    assert torch.allclose(class_log_posterior(x, 1.0, sde, mix).exp().mean(0), mix.class_prior(), atol=0.02)


def test_classifier_guidance_with_the_exact_classifier_is_cfg():
    """Dhariwal and Nichol's eps - gamma sigma grad log p(y|x) on the exact unconditional model equals
    eps_u + gamma (eps_c - eps_u) on the exact models: gamma = 1 is the conditional model, 0 the unconditional."""
    mix, sde, g = _mix2d(), VPSDE(), torch.Generator().manual_seed(1)
    x, t = 2 * torch.randn(50, 2, generator=g, dtype=D), torch.full((50,), 0.4, dtype=D)
    cond, unc = class_denoiser(sde, mix, 2), class_denoiser(sde, mix)
    for gamma in (0.0, 1.0, 3.5):
        cg = classifier_guided_denoiser(unc, MixtureClassifier(sde, mix), 2, gamma, sde)(x, t)
        assert torch.allclose(cg, guided(cond, unc, gamma)(x, t), atol=1e-10), gamma
    assert torch.allclose(guided(cond, unc, 1.0)(x, t), cond(x, t), atol=1e-12)
    assert torch.allclose(guided(cond, unc, 0.0)(x, t), unc(x, t), atol=1e-12)


def test_w_and_s_conventions_against_diffusers_guider():
    """diffusers' ClassifierFreeGuidance(guidance_scale=s) is our scale s = 1 + w; with use_original_formulation=True
    the same argument means Ho and Salimans' w: one number, two meanings."""
    guiders = pytest.importorskip("diffusers.guiders")
    g = torch.Generator().manual_seed(2)
    c, u = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    for w in (0.0, 0.5, 2.0, 6.5):
        s = guidance_scale(w=w)
        assert s == 1 + w
        native = guiders.ClassifierFreeGuidance(guidance_scale=s).forward(c, u).pred
        original = guiders.ClassifierFreeGuidance(guidance_scale=w, use_original_formulation=True).forward(c, u).pred
        assert torch.allclose(native, combine(c, u, w=w), atol=1e-5)
        assert torch.allclose(native, combine(c, u, scale=s), atol=1e-5)
        assert torch.allclose(original, combine(c, u, w=w), atol=1e-5)
    mistaken = guiders.ClassifierFreeGuidance(guidance_scale=2.0).forward(c, u).pred  # "w = 2" passed as s
    assert not torch.allclose(mistaken, combine(c, u, w=2.0), atol=1e-2)


def test_w0_guided_sampling_is_conditional_sampling_with_the_same_noise():
    """Exact mixture (float64) and a conditional UNet (float32): w = 0 reproduces the conditional sampler's path."""
    mix, sde = _mix2d(), VPSDE()
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=D)
    a = ddpm_ancestral(guided(class_denoiser(sde, mix, 0), class_denoiser(sde, mix), 1.0), sde, x_T, 30,
                       generator=torch.Generator().manual_seed(4)).x  # fmt: skip
    b = ddpm_ancestral(class_denoiser(sde, mix, 0), sde, x_T, 30, generator=torch.Generator().manual_seed(4)).x
    assert torch.allclose(a, b, atol=1e-12)
    from lib.nn.unet import UNet, UNetConfig

    torch.manual_seed(0)
    net = UNet(UNetConfig(base_channels=8, time_dim=16, num_classes=3, heads=2)).eval()
    for p in net.out[-1].parameters():
        torch.nn.init.normal_(p, std=0.1)
    y, x_T = torch.tensor([0, 1, 2, 1]), torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a = ddpm_ancestral(guided_denoiser(net, w=0.0, y=y), sde, x_T, 8, generator=torch.Generator().manual_seed(6)).x
        b = ddpm_ancestral(Denoiser(net, y=y), sde, x_T, 8, generator=torch.Generator().manual_seed(6)).x
    assert torch.allclose(a, b, atol=1e-4)
    with torch.no_grad():
        c = ddpm_ancestral(guided_denoiser(net, w=1.0, y=y), sde, x_T, 8, generator=torch.Generator().manual_seed(6)).x
    assert not torch.allclose(a, c, atol=1e-3)  # the comparison can fail


def test_tilted_density_on_a_grid_and_the_noised_density():
    mix, sde = _mix1d(), VPSDE()
    grid = torch.linspace(-6, 6, 2401, dtype=D)
    h = float(grid[1] - grid[0])
    m1 = grid_mass(tilted_log_density(grid[:, None], mix, 1, 1.0))  # gamma = 1: p(x | y)
    assert abs(float(m1.sum()) - 1) < 1e-12
    assert torch.allclose(m1 / h, mix.log_prob(grid[:, None], 1).exp(), atol=1e-6)
    m3 = grid_mass(tilted_log_density(grid[:, None], mix, 1, 3.0))
    mean1, mean3 = float((m1 * grid).sum()), float((m3 * grid).sum())
    assert mean3 > mean1 + 0.01  # the tilt moves mass away from the other class
    normal = torch.distributions.Normal(torch.tensor(1.0, dtype=D), 0.5)
    s = sample_grid(grid[:, None], m1, h, 4000, torch.Generator().manual_seed(7))[:, 0]
    exact_cdf = normal.cdf(grid)
    assert ks_1d(s, grid, exact_cdf) < 0.03  # about 1.36 / sqrt(n) at the 5% level
    assert ks_1d(s + 0.2, grid, exact_cdf) > 0.1
    t = 0.4
    a, sig = float(sde.alpha(torch.tensor(t, dtype=D))), float(sde.sigma(torch.tensor(t, dtype=D)))
    closed = torch.distributions.Normal(torch.tensor(a, dtype=D), math.sqrt(a**2 * 0.25 + sig**2)).log_prob(grid).exp()
    assert torch.allclose(noised_density_1d(grid, m1 / h, sde, t), closed, atol=1e-6)


def test_guided_samples_are_not_the_tilted_density_1d():
    """With exact scores the guided probability-flow ODE reproduces p(x | y) at gamma = 1 but not the tilted
    density at gamma = 3 (the ODE pushes prior quantiles to data quantiles: no sampling noise)."""
    mix, sde = _mix1d(), VPSDE()
    grid = torch.linspace(-6, 6, 2401, dtype=D)
    n = 1000
    x_T = torch.distributions.Normal(0.0, 1.0).icdf((torch.arange(n) + 0.5) / n).to(D)[:, None]
    ks = {}
    for gamma in (1.0, 3.0):
        cdf = grid_mass(tilted_log_density(grid[:, None], mix, 1, gamma)).cumsum(0)
        den = guided(class_denoiser(sde, mix, 1), class_denoiser(sde, mix), gamma)
        ks[gamma] = ks_1d(heun(den, sde, x_T, 60, t_min=1e-4).x[:, 0], grid, cdf)
    assert ks[1.0] < 0.01 and ks[3.0] > 0.3, ks


def test_errors():
    mix, sde = _mix2d(), VPSDE()
    x = torch.zeros(3, 2, dtype=D)
    with pytest.raises(ValueError, match="labels"):
        LabelledMixture(mix.weights, mix.means, mix.covs, torch.tensor([0, 1, 3, 0, 1, 3]))  # class 2 missing
    with pytest.raises(ValueError, match="labels"):
        LabelledMixture(mix.weights, mix.means, mix.covs, torch.zeros(6))  # float labels
    with pytest.raises(ValueError, match="y must be a class"):
        classifier_grad(x, 0.5, sde, mix, 3)
    with pytest.raises(TypeError, match="y must be an int"):
        class_score(x, 0.5, sde, mix, 1.0)
    with pytest.raises(ValueError, match="y must hold labels"):
        classifier_guided_denoiser(class_denoiser(sde, mix), MixtureClassifier(sde, mix), 3, 1.0, sde)
    with pytest.raises(TypeError, match="gamma"):
        tilted_log_density(x, mix, 0, "2")
    with pytest.raises(TypeError, match="scale"):
        guided(class_denoiser(sde, mix, 0), class_denoiser(sde, mix), None)
    with pytest.raises(ValueError, match="same thing"):
        guided(class_denoiser(sde, mix, 0), class_denoiser(sde, mix, prediction="x0"), 2.0)
    with pytest.raises(TypeError, match="Denoiser"):
        guided(lambda x, t: x, class_denoiser(sde, mix), 2.0)
    with pytest.raises(ValueError, match="centres"):
        sample_grid(torch.zeros(5, 2), torch.ones(4) / 4, 0.1, 3)
    with pytest.raises(ValueError, match="1-D"):
        ks_1d(torch.zeros(5, 1), torch.linspace(0, 1, 3), torch.linspace(0, 1, 3))
    with pytest.raises(ValueError, match="positive int"):
        mix.sample(0)
