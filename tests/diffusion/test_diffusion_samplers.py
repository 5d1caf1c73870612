"""Every sampler on every schedule with exact denoisers (rectified flow included): the closed-form PF-ODE map of
a Gaussian, the Gaussian's moments for the stochastic samplers, a Gaussian mixture by energy distance, every
prediction giving the same samples, NFE counts, orders, errors."""

import pytest
import torch

from lib.data.toy2d import GaussianMixture
from lib.diffusion import samplers as S
from lib.diffusion.predictions import PREDICTIONS, Denoiser
from lib.diffusion.schedules import VESDE, VPSDE, CosineSchedule, DiscreteSchedule, RectifiedFlow, SubVPSDE
from lib.diffusion.score import gmm_denoiser
from lib.metrics import energy_distance, mean_pairwise_distance

SCHEDULES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE(0.01, 10.0), "cosine": CosineSchedule(),
             "rf": RectifiedFlow(), "sd": DiscreteSchedule()}  # fmt: skip
KW = {"euler": dict(steps=80), "heun": dict(steps=15), "ode": dict(rtol=1e-4, atol=1e-4), "ddim": dict(steps=50),
      "ddpm": dict(steps=100), "em": dict(steps=100), "pc": dict(steps=50)}  # fmt: skip
GM = GaussianMixture(
    torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64),
    torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.5, -2.0]], dtype=torch.float64),
    torch.stack([torch.tensor([[0.3, 0.1], [0.1, 0.2]]), 0.1 * torch.eye(2),
                 torch.tensor([[0.5, -0.2], [-0.2, 0.2]])]).double(),
)  # fmt: skip


def _alpha_zero(sch):
    return float(sch.alpha(torch.tensor(1.0, dtype=torch.float64))) < 1e-12


def _kw(name, sch, prediction, seed=1):
    """The book's rules: with alpha(1) = 0, eps/score models and the SDE samplers start at 0.999, SDE samplers
    on the uniform log-SNR grid (stable steps: g^2 |dt| / sigma^2 = |d lambda|); fixed-step ODE samplers on EDM's
    grid where the log-SNR is finite at both ends."""
    kw = dict(KW[name])
    if _alpha_zero(sch) and (name in ("em", "pc") or prediction in ("eps", "score")):
        kw["t_max"] = 0.999
        if name in ("em", "pc"):
            kw["grid"] = "logsnr"
    if name in ("euler", "heun", "ddim") and (kw.get("t_max", 1.0) < 1 or not _alpha_zero(sch)):
        kw["grid"] = "edm"
    if name in S.STOCHASTIC:
        kw["generator"] = torch.Generator().manual_seed(seed)
    return kw


@pytest.fixture(scope="module")
def target():
    g = torch.Generator().manual_seed(0)
    n = 500
    a = GM.sample(n, g)
    a_self = mean_pairwise_distance(a)
    return a, a_self, 2 * a_self / (n - 1)  # E[energy distance] of two independent n-sets = 2 E|Y - Y'| / n


CASES = [(s, n, PREDICTIONS[(i + j) % len(PREDICTIONS)]) for i, s in enumerate(SCHEDULES) for j, n in enumerate(KW)]


@pytest.mark.parametrize("sname,name,prediction", CASES, ids=[f"{s}-{n}-{p}" for s, n, p in CASES])
def test_sampler_on_mixture(sname, name, prediction, target):
    """Every schedule x every sampler (each prediction appears with every sampler and every schedule) reaches
    the mixture: energy distance within 3x the level of two independent samples."""
    a, a_self, ref = target
    sch = SCHEDULES[sname]
    den = gmm_denoiser(sch, GM.weights, GM.means, GM.covs, prediction)
    x_T = sch.prior_sample((len(a), 2), torch.Generator().manual_seed(2), dtype=torch.float64)
    res = S.SAMPLERS[name](den, sch, x_T, **_kw(name, sch, prediction))
    assert res.x.shape == x_T.shape and torch.isfinite(res.x).all() and res.nfe > 0
    ed = energy_distance(res.x, a, a_self)
    assert ed < 3 * ref, f"energy distance {ed:.2e} vs independent-sample level {ref:.2e}"
    if name == "ddim":  # the bar can fail: a denoiser of the wrong data (means shifted by 1) is far off
        bad = gmm_denoiser(sch, GM.weights, GM.means + 1.0, GM.covs, prediction)
        assert energy_distance(S.ddim(bad, sch, x_T, **_kw(name, sch, prediction)).x, a, a_self) > 20 * ref


FAST = {"euler": 4, "heun": 2, "ode": None, "ddim": 4, "ddpm": 6, "em": 6, "pc": 3}


@pytest.mark.parametrize("sname", list(SCHEDULES))
def test_every_prediction_gives_the_same_samples(sname):
    """The full product: on each schedule every sampler returns the same samples (same noise) whichever of the
    five predictions the exact denoiser outputs, since the converters are exact."""
    sch = SCHEDULES[sname]
    x_T = sch.prior_sample((16, 2), torch.Generator().manual_seed(3), dtype=torch.float64)
    for name, steps in FAST.items():
        outs = []
        for p in PREDICTIONS:
            kw = _kw(name, sch, "eps")  # same grid for all five (t_max = 0.999 where alpha(1) = 0)
            kw.update(steps=steps) if steps else kw.update(rtol=1e-3, atol=1e-3)  # loose: the same path for all five
            outs.append(S.SAMPLERS[name](gmm_denoiser(sch, GM.weights, GM.means, GM.covs, p), sch, x_T, **kw).x)
        for p, o in zip(PREDICTIONS[1:], outs[1:], strict=True):
            assert torch.allclose(o, outs[0], atol=1e-6, rtol=1e-6), (sname, name, p, (o - outs[0]).abs().max())


def _gaussian_flow_map(sch, x_1, t0, t1, m, c):
    """Closed-form PF-ODE map of N(m, diag(c)) data from time t1 to t0: each coordinate is rescaled by the ratio
    of marginal stds, x_t0 = alpha_0 m + s_0 / s_1 (x_t1 - alpha_1 m) with s^2 = alpha^2 c + sigma^2."""
    t0, t1 = torch.tensor(t0, dtype=torch.float64), torch.tensor(t1, dtype=torch.float64)
    s = lambda t: (sch.alpha(t) ** 2 * c + sch.sigma(t) ** 2).sqrt()
    return sch.alpha(t0) * m + s(t0) / s(t1) * (x_1 - sch.alpha(t1) * m)


@pytest.mark.parametrize("sname", list(SCHEDULES))
def test_ode_samplers_follow_the_exact_flow_map_of_a_gaussian(sname):
    """Deterministic samplers against the known target map (no sampling noise): dopri5 to 1e-4, Heun second order,
    Euler and DDIM first order."""
    sch = SCHEDULES[sname]
    m, c = torch.tensor([1.0, -0.5], dtype=torch.float64), torch.tensor([0.3, 2.0], dtype=torch.float64)
    den = gmm_denoiser(sch, torch.ones(1, dtype=torch.float64), m[None], torch.diag(c)[None], "v")
    t_max = 0.999 if _alpha_zero(sch) else 1.0
    x_T = sch.prior_sample((32, 2), torch.Generator().manual_seed(4), dtype=torch.float64)
    exact = _gaussian_flow_map(sch, x_T, 1e-3, t_max, m, c)
    err = lambda r: float((r.x - exact).abs().max())
    # the discrete table's velocity jumps at its 1,000 knots: the adaptive solver needs many more steps there
    tol, rtol = (3e-3, 1e-5) if sname == "sd" else (1e-4, 1e-7)
    assert err(S.probability_flow_ode(den, sch, x_T, rtol=rtol, atol=rtol, t_max=t_max)) < tol
    if sname != "sd":  # orders need a smooth schedule
        e_heun = [err(S.heun(den, sch, x_T, n, grid="uniform", t_max=t_max)) for n in (20, 40)]
        assert e_heun[0] / e_heun[1] > 3.0  # second order: ~4x per halving
        e_euler = [err(S.euler(den, sch, x_T, n, t_max=t_max)) for n in (50, 100)]
        assert 1.6 < e_euler[0] / e_euler[1] < 2.6  # first order
    assert err(S.ddim(den, sch, x_T, 100, t_max=t_max)) < 5e-2


@pytest.mark.parametrize("name", ["ddpm", "em", "pc"])
@pytest.mark.parametrize("sname", ["vp", "rf"])
def test_stochastic_samplers_reach_gaussian_moments(sname, name):
    """Mean and variance of a Gaussian target. Ancestral sampling replaces x0 by its posterior mean and so drops
    Var(x0 | x_t) at every step: its variance is low by O(1/steps) (about 10% at 100 steps), shrinking with steps."""  # noqa: E501
    sch = SCHEDULES[sname]
    m, c = torch.tensor([1.0, -0.5], dtype=torch.float64), torch.tensor([0.3, 2.0], dtype=torch.float64)
    den = gmm_denoiser(sch, torch.ones(1, dtype=torch.float64), m[None], torch.diag(c)[None], "x0")
    n = 2000
    x_T = sch.prior_sample((n, 2), torch.Generator().manual_seed(5), dtype=torch.float64)
    run = lambda steps: S.SAMPLERS[name](den, sch, x_T, **dict(_kw(name, sch, "x0", seed=6), steps=steps)).x
    x = run(50 if name == "ddpm" else 100)
    assert torch.allclose(x.mean(0), m, atol=4 * (c / n).sqrt().max() + 0.02)
    if name == "ddpm":
        x4 = run(200)
        err1, err4 = float((x.var(0) / c - 1).abs().max()), float((x4.var(0) / c - 1).abs().max())
        assert err4 < 0.08 and err4 < err1 / 1.5, (err1, err4)
    else:
        assert torch.allclose(x.var(0), c, rtol=0.08)


def test_nfe_counts_and_order_rules():
    sch = VPSDE()
    den = gmm_denoiser(sch, GM.weights.float(), GM.means.float(), GM.covs.float(), "eps")
    x = torch.randn(10, 2)
    assert S.euler_maruyama(den, sch, x, 7).nfe == 7
    assert S.predictor_corrector(den, sch, x, 5, n_corrector=2).nfe == 15
    assert S.heun(den, sch, x, 4).nfe == 8 and S.euler(den, sch, x, 4).nfe == 4
    assert S.ddim(den, sch, x, 6).nfe == 6 and S.ddpm_ancestral(den, sch, x, 6).nfe == 6
    loose = S.probability_flow_ode(den, sch, x, rtol=1e-2, atol=1e-2).nfe
    assert loose < S.probability_flow_ode(den, sch, x, rtol=1e-6, atol=1e-6).nfe
    a, b = S.ddim(den, sch, x, 10), S.ddim(den, sch, x, 10)
    assert torch.equal(a.x, b.x)  # eta = 0 is deterministic
    ts = torch.tensor([1.0, 0.5, 0.1, 0.001])
    assert S.euler(den, sch, x, ts=ts).nfe == 3


def test_ddpm_step_discretises_the_reverse_sde():
    """One ancestral step from t to s = t - h has mean and variance equal to one Euler-Maruyama step of the
    reverse SDE up to O(h^2) (per unit time the two agree as h -> 0)."""
    sch = VPSDE()
    m, c = torch.tensor([1.0, -0.5], dtype=torch.float64), torch.tensor([0.3, 2.0], dtype=torch.float64)
    den = gmm_denoiser(sch, torch.ones(1, dtype=torch.float64), m[None], torch.diag(c)[None], "eps")
    x = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    errs = []
    for h in (1e-2, 5e-3, 2.5e-3):
        t, s = torch.tensor([0.5], dtype=torch.float64), torch.tensor([0.5 - h], dtype=torch.float64)
        x0, eps = den.x0_eps(x, t, sch)
        a_t, s_t, a_s, s_s = sch.alpha(t), sch.sigma(t), sch.alpha(s), sch.sigma(s)
        var_post = (s_t**2 - (a_t / a_s) ** 2 * s_s**2) * s_s**2 / s_t**2
        mean_ddpm = a_s * x0 + (s_s**2 - var_post).sqrt() * eps
        mean_em = x - h * S.reverse_sde_drift(sch, t, x0, eps)
        var_em = sch.g2(t) * h
        errs.append((float((mean_ddpm - mean_em).abs().max()) / h, float((var_post - var_em).abs()) / h))
    for k in (0, 1):  # mean and variance: the difference per unit time halves with h (local error O(h^2))
        assert errs[0][k] / errs[1][k] == pytest.approx(2.0, rel=0.15) and errs[1][k] / errs[2][k] == pytest.approx(
            2.0, rel=0.15
        ), errs


def test_bad_inputs():
    sch = VPSDE()
    den = gmm_denoiser(sch, GM.weights.float(), GM.means.float(), GM.covs.float())
    with pytest.raises(ValueError, match="steps"):
        S.euler_maruyama(den, sch, torch.zeros(3, 2), 0)
    with pytest.raises(ValueError, match="steps or ts"):
        S.euler(den, sch, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="x_T"):
        S.ddim(den, sch, torch.zeros(3), 2)
    with pytest.raises(TypeError, match="schedule"):
        S.ddim(den, "vp", torch.zeros(3, 2), 2)
    with pytest.raises(TypeError, match="denoiser"):
        S.ddim(lambda x, t: x, sch, torch.zeros(3, 2), 2)
    with pytest.raises(ValueError, match="snr"):
        S.predictor_corrector(den, sch, torch.zeros(3, 2), 2, snr=-1.0)
    with pytest.raises(ValueError, match="eta"):
        S.ddim(den, sch, torch.zeros(3, 2), 2, eta=-1.0)
    with pytest.raises(ValueError, match="ts"):
        S.euler(den, sch, torch.zeros(3, 2), ts=torch.tensor([0.1, 0.5]))
    rf = RectifiedFlow()
    with pytest.raises(ValueError, match="t_max"):  # an eps model says nothing about x0 where alpha = 0
        S.ddim(Denoiser(lambda x, t: x, "eps"), rf, torch.zeros(3, 2), 4)
    with pytest.raises(ValueError, match="t_max"):  # the reverse SDE's f, g are infinite at t = 1
        S.euler_maruyama(Denoiser(lambda x, t: x, "velocity"), rf, torch.zeros(3, 2), 4)
