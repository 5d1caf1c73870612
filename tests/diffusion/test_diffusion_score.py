"""Exact mixture scores and denoisers on every schedule, and the DSM identity by quadrature."""

import pytest
import torch

from lib.data.toy2d import GaussianMixture
from lib.diffusion.predictions import PREDICTIONS, from_x0_eps
from lib.diffusion.schedules import VESDE, VPSDE, CosineSchedule, DiscreteSchedule, RectifiedFlow, SubVPSDE
from lib.diffusion.score import gmm_denoiser, gmm_logp, gmm_score, gmm_x0_eps, score_matching_objectives_1d
from lib.utils import seed_everything

SDES = [VPSDE(), SubVPSDE(), VESDE(0.05, 5.0), CosineSchedule(), RectifiedFlow(), DiscreteSchedule()]


def mixture(dtype=torch.float64):
    return GaussianMixture(
        torch.tensor([0.5, 0.3, 0.2], dtype=dtype),
        torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.5, -2.0]], dtype=dtype),
        torch.stack(
            [torch.tensor([[0.3, 0.1], [0.1, 0.2]]), 0.1 * torch.eye(2), torch.tensor([[0.5, -0.2], [-0.2, 0.2]])]
        ).to(dtype),
    )


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_gmm_score_is_gradient_of_log_density(sde):
    gm, g = mixture(), torch.Generator().manual_seed(0)
    x = (3 * torch.randn(64, 2, generator=g, dtype=torch.float64)).requires_grad_(True)
    t = torch.rand(64, generator=g, dtype=torch.float64) * 0.98 + 0.01  # a different time per point
    (auto,) = torch.autograd.grad(gmm_logp(x, t, sde, gm.weights, gm.means, gm.covs).sum(), x)
    assert torch.allclose(gmm_score(x, t, sde, gm.weights, gm.means, gm.covs), auto, rtol=1e-9, atol=1e-10)
    # one shared time takes the batched fast path: same answer
    s_shared = gmm_score(x, 0.4, sde, gm.weights, gm.means, gm.covs)
    (auto2,) = torch.autograd.grad(
        gmm_logp(x, torch.full((64,), 0.4, dtype=x.dtype), sde, gm.weights, gm.means, gm.covs).sum(), x
    )
    assert torch.allclose(s_shared, auto2, rtol=1e-9, atol=1e-10)


def test_gmm_logp_single_gaussian_closed_form():
    sde, m, C = (
        VPSDE(),
        torch.tensor([[1.0, -1.0]], dtype=torch.float64),
        torch.tensor([[[0.5, 0.2], [0.2, 0.3]]], dtype=torch.float64),
    )
    x, t = torch.randn(10, 2, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)
    a, s = sde.alpha(t), sde.sigma(t)
    ref = torch.distributions.MultivariateNormal(
        a * m[0], a**2 * C[0] + s**2 * torch.eye(2, dtype=torch.float64)
    ).log_prob(x)
    assert torch.allclose(gmm_logp(x, t, sde, torch.ones(1, dtype=torch.float64), m, C), ref)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_exact_denoiser_is_consistent_with_the_score(sde):
    """alpha x0_hat + sigma eps_hat = x_t, eps_hat = -sigma score (Tweedie), and the denoiser outputs any prediction."""
    gm, g = mixture(), torch.Generator().manual_seed(1)
    x = 2 * torch.randn(50, 2, generator=g, dtype=torch.float64)
    t = torch.rand(50, generator=g, dtype=torch.float64) * 0.95 + 0.02
    x0, eps = gmm_x0_eps(x, t, sde, gm.weights, gm.means, gm.covs)
    a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    assert torch.allclose(a * x0 + s * eps, x, atol=1e-10)
    assert torch.allclose(eps, -s * gmm_score(x, t, sde, gm.weights, gm.means, gm.covs), atol=1e-10)
    for p in PREDICTIONS:
        out = gmm_denoiser(sde, gm.weights, gm.means, gm.covs, p)(x, t)
        assert torch.allclose(out, from_x0_eps(x0, eps, x, t, sde, p), atol=1e-10)


def test_exact_denoiser_single_gaussian_closed_form_and_ends():
    """One Gaussian N(m, C): E[x0 | x_t] = m + alpha C (alpha^2 C + sigma^2 I)^{-1} (x_t - alpha m); at t = 1 of
    rectified flow (alpha = 0) it is m, at t = 0 it is x itself; both finite."""
    m = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    C = torch.tensor([[[0.5, 0.2], [0.2, 0.3]]], dtype=torch.float64)
    w, rf = torch.ones(1, dtype=torch.float64), RectifiedFlow()
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = torch.full((6,), 0.3, dtype=torch.float64)
    a, s = 0.7, 0.3
    K = a * C[0] @ torch.linalg.inv(a**2 * C[0] + s**2 * torch.eye(2, dtype=torch.float64))
    ref = m + (x - a * m) @ K.T
    assert torch.allclose(gmm_x0_eps(x, t, rf, w, m, C)[0], ref, atol=1e-12)
    x0_1, eps_1 = gmm_x0_eps(x, torch.ones(6, dtype=torch.float64), rf, w, m, C)
    assert torch.allclose(x0_1, m.expand(6, 2)) and torch.allclose(eps_1, x)
    x0_0, eps_0 = gmm_x0_eps(x, torch.zeros(6, dtype=torch.float64), rf, w, m, C)
    assert torch.allclose(x0_0, x) and torch.equal(eps_0, torch.zeros_like(x))
    # gmm_score is defined for rectified flow too (contract kept for every schedule)
    assert torch.isfinite(gmm_score(x, 0.999, rf, w, m, C)).all()


def test_dsm_and_explicit_score_matching_differ_by_a_constant():
    """Vincent (2011): DSM(theta) - ESM(theta) is the same for every score model theta."""
    sde, grid = VPSDE(), torch.linspace(-6, 6, 6001, dtype=torch.float64)
    pts, w = torch.tensor([-1.0, 0.2, 1.3], dtype=torch.float64), torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64)
    gaps, esms = [], []
    for seed in range(4):
        seed_everything(seed, threads=None)
        net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()
        fn = lambda x, t, net=net: net(torch.cat([x, t[:, None]], 1))
        with torch.no_grad():
            dsm, esm = score_matching_objectives_1d(fn, pts, w, sde, 0.3, grid)
        gaps.append(float(dsm - esm))
        esms.append(float(esm))
    assert max(gaps) - min(gaps) < 1e-8 * max(abs(g) for g in gaps)
    assert max(esms) - min(esms) > 1e-2  # the objectives themselves do depend on theta
    # the true score attains ESM = 0
    true = lambda x, t: gmm_score(x, t, sde, w, pts[:, None], torch.full((3, 1, 1), 1e-12, dtype=torch.float64))
    dsm, esm = score_matching_objectives_1d(true, pts, w, sde, 0.3, grid)
    assert float(esm) < 1e-8 and float(dsm - esm) == pytest.approx(gaps[0], rel=1e-6)


def test_shared_time_fast_path_matches_the_per_example_path():
    """With one time for the whole batch (samplers) the K inverses are applied directly; the result must equal
    the per-example Cholesky solve (forced here by a time differing in one example by 1e-13)."""
    gm = mixture()
    w, m, c = gm.weights, gm.means, gm.covs
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for sde in (VPSDE(), RectifiedFlow()):
        t = torch.full((64,), 0.37, dtype=torch.float64)
        t_split = t.clone()
        t_split[-1] += 1e-13
        for f in (gmm_score, gmm_logp):
            assert torch.allclose(f(x, t, sde, w, m, c), f(x, t_split, sde, w, m, c), rtol=1e-9, atol=1e-9)
        for a, b in zip(gmm_x0_eps(x, t, sde, w, m, c), gmm_x0_eps(x, t_split, sde, w, m, c), strict=True):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-9)
