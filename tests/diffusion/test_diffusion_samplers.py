"""Every sampler on an analytic Gaussian mixture (exact score, no learning), plus solver properties."""

import pytest
import torch

from lib.data.toy2d import GaussianMixture
from lib.diffusion import samplers as S
from lib.diffusion.score import gmm_score
from lib.diffusion.sde import VESDE, VPSDE, SubVPSDE
from lib.metrics import energy_distance, mean_pairwise_distance

GM = GaussianMixture(
    torch.tensor([0.5, 0.3, 0.2]),
    torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.5, -2.0]]),
    torch.stack([torch.tensor([[0.3, 0.1], [0.1, 0.2]]), 0.1 * torch.eye(2), torch.tensor([[0.5, -0.2], [-0.2, 0.2]])]),
)
N = 2000


def score_fn(sde):
    return lambda x, t: gmm_score(x, t, sde, GM.weights, GM.means, GM.covs)


@pytest.fixture(scope="module")
def target():
    g = torch.Generator().manual_seed(0)
    a = GM.sample(N, g)
    a_self = mean_pairwise_distance(a)
    ref = sum(energy_distance(GM.sample(N, g), a, a_self) for _ in range(3)) / 3
    return a, a_self, ref


CASES = [
    ("em", VPSDE(), dict(steps=200)),
    ("pc", VPSDE(), dict(steps=100, snr=0.16)),
    ("ode", VPSDE(), dict(rtol=1e-4, atol=1e-4)),
    ("ode", VPSDE(), dict(method="heun", steps=40)),
    ("ddpm", VPSDE(), dict(steps=200)),
    ("ddim", VPSDE(), dict(steps=50)),
    ("em", SubVPSDE(), dict(steps=200)),
    ("ode", VESDE(0.01, 10.0), dict(rtol=1e-4, atol=1e-4)),
    ("ddpm", VESDE(0.01, 10.0), dict(steps=200)),
]


@pytest.mark.parametrize("name,sde,kw", CASES, ids=[f"{c[0]}-{type(c[1]).__name__}-{i}" for i, c in enumerate(CASES)])
def test_sampler_on_mixture(name, sde, kw, target):
    a, a_self, ref = target
    g = torch.Generator().manual_seed(1)
    x_T = sde.prior_sample((N, 2), g)
    if name in ("em", "pc", "ddpm"):
        kw = dict(kw, generator=g)
    res = S.SAMPLERS[name](score_fn(sde), sde, x_T, **kw)
    assert res.x.shape == (N, 2) and torch.isfinite(res.x).all() and res.nfe > 0
    ed = energy_distance(res.x, a, a_self)
    assert ed < 4 * ref, f"energy distance {ed:.2e} vs independent-sample level {ref:.2e}"
    # a sampler that ignores the score is far off: the test can fail
    if name == "em":
        bad = S.euler_maruyama(lambda x, t: torch.zeros_like(x), sde, x_T, steps=20, generator=g)
        assert energy_distance(bad.x, a, a_self) > 20 * ref


def test_nfe_counts():
    sde, x = VPSDE(), torch.randn(10, 2)
    sf = score_fn(sde)
    assert S.euler_maruyama(sf, sde, x, steps=7).nfe == 7
    assert S.predictor_corrector(sf, sde, x, steps=5, n_corrector=2).nfe == 15
    assert S.probability_flow_ode(sf, sde, x, method="heun", steps=4).nfe == 8
    assert S.probability_flow_ode(sf, sde, x, method="euler", steps=4).nfe == 4
    assert S.ddim(sf, sde, x, steps=6).nfe == 6
    loose = S.probability_flow_ode(sf, sde, x, rtol=1e-2, atol=1e-2).nfe
    tight = S.probability_flow_ode(sf, sde, x, rtol=1e-6, atol=1e-6).nfe
    assert loose < tight


def test_heun_is_second_order_and_ddim_deterministic():
    sde, x = VPSDE(), torch.randn(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    sf = score_fn(sde)
    gm64 = lambda x, t: gmm_score(x, t, sde, GM.weights.double(), GM.means.double(), GM.covs.double())
    ref = S.probability_flow_ode(gm64, sde, x, rtol=1e-9, atol=1e-9).x
    err = {}
    for m in ("euler", "heun"):
        for n in (50, 100):
            err[m, n] = float((S.probability_flow_ode(gm64, sde, x, method=m, steps=n).x - ref).abs().max())
    assert err["heun", 100] < err["euler", 100]
    assert err["heun", 50] / err["heun", 100] > 3.0  # ~4 for a second-order method
    a, b = S.ddim(sf, sde, x.float(), steps=10), S.ddim(sf, sde, x.float(), steps=10)
    assert torch.equal(a.x, b.x)


def test_bad_inputs():
    sde, sf = VPSDE(), score_fn(VPSDE())
    with pytest.raises(ValueError, match="steps"):
        S.euler_maruyama(sf, sde, torch.zeros(3, 2), steps=0)
    with pytest.raises(ValueError, match="x_T"):
        S.ddim(sf, sde, torch.zeros(3), steps=2)
    with pytest.raises(TypeError, match="sde"):
        S.ddim(sf, "vp", torch.zeros(3, 2), steps=2)
    with pytest.raises(TypeError, match="score_fn"):
        S.ddim(None, sde, torch.zeros(3, 2), steps=2)
    with pytest.raises(ValueError, match="needs steps"):
        S.probability_flow_ode(sf, sde, torch.zeros(3, 2), method="heun")
    with pytest.raises(ValueError, match="snr"):
        S.predictor_corrector(sf, sde, torch.zeros(3, 2), snr=-1.0)
