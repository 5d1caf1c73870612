"""Exact mixture scores, parameterisation converters, the DSM identity and the DSM loss."""

import itertools

import pytest
import torch

from lib.data.toy2d import GaussianMixture
from lib.diffusion.score import (
    PARAMETERISATIONS,
    DSMLoss,
    convert,
    from_eps,
    gmm_logp,
    gmm_score,
    score_fn_from_model,
    score_matching_objectives_1d,
    to_eps,
)
from lib.diffusion.sde import VESDE, VPSDE, SubVPSDE

SDES = [VPSDE(), SubVPSDE(), VESDE(0.05, 5.0)]


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
def test_parameterisation_round_trips(sde):
    g = torch.Generator().manual_seed(3)
    x0, eps = (
        torch.randn(8, 1, 4, 4, generator=g, dtype=torch.float64),
        torch.randn(8, 1, 4, 4, generator=g, dtype=torch.float64),
    )
    t = torch.rand(8, generator=g, dtype=torch.float64) * 0.9 + 0.05
    x_t = sde.alpha(t)[:, None, None, None] * x0 + sde.sigma(t)[:, None, None, None] * eps
    a, s = sde.alpha(t)[:, None, None, None], sde.sigma(t)[:, None, None, None]
    truth = {"eps": eps, "x0": x0, "score": -eps / s, "v": a * eps - s * x0}
    for p in PARAMETERISATIONS:
        assert torch.allclose(from_eps(eps, x_t, t, sde, p), truth[p], rtol=1e-10, atol=1e-10)
        assert torch.allclose(to_eps(truth[p], x_t, t, sde, p), eps, rtol=1e-10, atol=1e-10)
    for src, dst in itertools.product(PARAMETERISATIONS, repeat=2):
        assert torch.allclose(convert(truth[src], x_t, t, sde, src, dst), truth[dst], rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="src"):
        convert(eps, x_t, t, sde, "noise", "eps")


def test_dsm_and_explicit_score_matching_differ_by_a_constant():
    """Vincent (2011): DSM(theta) - ESM(theta) is the same for every score model theta."""
    sde, grid = VPSDE(), torch.linspace(-6, 6, 6001, dtype=torch.float64)
    pts, w = torch.tensor([-1.0, 0.2, 1.3], dtype=torch.float64), torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64)
    gaps, esms = [], []
    for seed in range(4):
        torch.manual_seed(seed)
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


def test_dsm_loss_is_parameterisation_invariant():
    """An eps model and the same model re-expressed as x0 / v / score give the same DSM loss."""
    sde = VPSDE()
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    eps_model = lambda x, t: net(torch.cat([x, t[:, None]], 1))
    x0 = torch.randn(32, 2)
    losses = []
    for p in PARAMETERISATIONS:
        model = lambda x, t, p=p: from_eps(eps_model(x, t), x, t, sde, p)
        torch.manual_seed(1)
        losses.append(DSMLoss(sde, parameterisation=p, weighting="likelihood")(model, x0).item())
    assert max(losses) - min(losses) < 1e-4 * abs(losses[0])
    sf = score_fn_from_model(eps_model, sde, "eps")
    t = torch.full((32,), 0.5)
    assert torch.allclose(sf(x0, t), -eps_model(x0, t) / sde.sigma(t)[:, None])


def test_dsm_loss_batches_and_errors():
    sde = VPSDE()
    calls = {}

    def model(x, t, y=None, context=None):
        calls.update(y=y, context=context)
        return torch.zeros_like(x)

    x0, y = torch.randn(16, 2), torch.arange(16) % 3
    loss = DSMLoss(sde, use_labels=True, p_uncond=1.0, null_label=3)(model, (x0, y))
    assert (calls["y"] == 3).all() and float(loss) > 0
    DSMLoss(sde)(model, {"x": x0, "context": torch.ones(16, 4, 5)})
    assert calls["context"].shape == (16, 4, 5)
    for bad in (dict(parameterisation="noise"), dict(t_eps=0.0), dict(p_uncond=0.5)):
        with pytest.raises(ValueError):
            DSMLoss(sde, **bad)
    with pytest.raises(ValueError, match="weighting"):
        DSMLoss(sde, weighting="nope")(model, x0)
    with pytest.raises(ValueError, match="shape"):
        gmm_score(torch.zeros(3), 0.5, sde, *mixture().__dict__.values())
