"""The diffusion loss: every prediction and target, weighting invariances, flow matching, the exact denoiser
as its minimiser, condition dropout on tuple and dict batches through the model's null condition, errors."""

import dataclasses

import pytest
import torch

from lib.diffusion.loss import DiffusionLoss, drop_conditions, eps_scale, split_batch
from lib.diffusion.predictions import PREDICTIONS, from_x0_eps, to_x0_eps
from lib.diffusion.schedules import VPSDE, RectifiedFlow
from lib.diffusion.score import gmm_denoiser
from lib.diffusion.timesteps import TimeSampler
from lib.nn.unet import MLPConfig, TimeMLP, UNet, UNetConfig
from lib.utils import seed_everything


def _eps_net(seed=0):
    seed_everything(seed, threads=None)
    net = torch.nn.Linear(3, 2).double()
    return lambda x, t: net(torch.cat([x, t[:, None]], 1))


@pytest.mark.parametrize("weighting", ["likelihood", "score", "none"])
def test_loss_is_prediction_invariant_in_a_fixed_target(weighting):
    """The same eps network re-expressed in each prediction gives the same loss when the target is fixed."""
    sch, eps_model = VPSDE(), _eps_net()
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    losses = []
    for p in PREDICTIONS:
        model = lambda x, t, p=p: from_x0_eps(*to_x0_eps(eps_model(x, t), x, t, sch, "eps"), x, t, sch, p)
        loss = DiffusionLoss(sch, p, target="eps", weighting=weighting, generator=torch.Generator().manual_seed(2))
        losses.append(loss(model, x0).item())
    assert max(losses) - min(losses) < 1e-9 * abs(losses[0])


def test_likelihood_weighting_is_the_same_objective_in_every_target():
    """lambda = g^2 on the score error is one number, whichever space the error is measured in."""
    sch, eps_model = VPSDE(), _eps_net()
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ts = TimeSampler(t_min=0.05, t_max=0.95)
    make = lambda tg: DiffusionLoss(sch, "eps", target=tg, weighting="likelihood", t_sampler=ts,
                                    generator=torch.Generator().manual_seed(3))  # fmt: skip
    vals = [make(tg)(eps_model, x0).item() for tg in PREDICTIONS]
    assert max(vals) - min(vals) < 1e-9 * vals[0]
    t = torch.tensor([0.3], dtype=torch.float64)
    assert torch.allclose(eps_scale(t, sch, "score"), 1 / sch.sigma(t))


def test_flow_matching_loss_and_exact_minimiser():
    """RectifiedFlow + velocity: truth is eps - x0; the Bayes-optimal (exact) denoiser has a lower loss than a
    perturbed one, for every prediction."""
    rf = RectifiedFlow()
    w, m, C = (
        torch.ones(1, dtype=torch.float64),
        torch.tensor([[1.0, -1.0]], dtype=torch.float64),
        0.2 * torch.eye(2, dtype=torch.float64)[None],
    )
    x0 = m + torch.randn(4000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) @ (
        0.2**0.5 * torch.eye(2, dtype=torch.float64)
    )
    for p in ("velocity", "x0", "v"):
        exact = gmm_denoiser(rf, w, m, C, p)
        fm = DiffusionLoss(rf, p, target="velocity", t_sampler=TimeSampler(t_min=0.0))
        loss = lambda model, fm=fm: float(
            dataclasses.replace(fm, generator=torch.Generator().manual_seed(4))(model, x0)
        )
        wrong = gmm_denoiser(rf, w, m + 0.3, C, p)
        assert loss(exact.model) < loss(wrong.model)
    # the truth of the velocity target is eps - x0: a model returning it makes the loss zero
    calls = {}

    def oracle(x, t):
        calls["x"] = x
        return torch.zeros_like(x)

    DiffusionLoss(rf, "velocity", generator=torch.Generator().manual_seed(5))(oracle, x0[:8])
    g = torch.Generator().manual_seed(5)
    t = TimeSampler()(8, g, dtype=torch.float64)
    eps = torch.randn(x0[:8].shape, generator=g, dtype=torch.float64)
    assert torch.allclose(calls["x"], (1 - t)[:, None] * x0[:8] + t[:, None] * eps)


def test_condition_dropout_tuple_and_dict_batches():
    mlp = TimeMLP(MLPConfig(dim=2, hidden=8, depth=1, time_dim=8, num_classes=3))
    seen = {}

    class Spy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def null_condition(self, cond, drop):
            return self.inner.null_condition(cond, drop)

        def forward(self, x, t, **cond):
            seen.update(cond)
            return self.inner(x, t, **{k: v for k, v in cond.items() if k == "y"})

    x0, y = torch.randn(400, 2), torch.arange(400) % 3
    DiffusionLoss(VPSDE(), p_uncond=1.0)(Spy(mlp), (x0, y))
    assert (seen["y"] == 3).all()  # null label = num_classes
    DiffusionLoss(VPSDE(), p_uncond=0.3, generator=torch.Generator().manual_seed(0))(Spy(mlp), (x0, y))
    frac = float((seen["y"] == 3).float().mean())
    assert 0.2 < frac < 0.4
    # dict batch with a context: per-key probability, the UNet's learned null context
    unet = UNet(UNetConfig(base_channels=8, time_dim=16, num_classes=3, context_dim=4, heads=2))
    ctx, mask = torch.randn(6, 5, 4), torch.ones(6, 5, dtype=torch.bool)
    mask[:, 3:] = False
    cond = {"y": torch.zeros(6, dtype=torch.long), "context": ctx, "context_mask": mask}
    out = drop_conditions(unet, cond, {"context": 1.0}, torch.Generator().manual_seed(0))
    assert torch.equal(out["y"], cond["y"]) and torch.equal(out["context"], torch.zeros_like(ctx))
    assert out["context_mask"].all()  # the null context is attended everywhere
    loss = DiffusionLoss(VPSDE(), p_uncond={"context": 0.5, "y": 0.5})(unet, {"x": torch.randn(6, 1, 8, 8), **cond})
    assert torch.isfinite(loss)


def test_split_batch_and_errors():
    x = torch.randn(4, 2)
    assert split_batch(x)[1] == {} and split_batch((x, torch.zeros(4)))[1].keys() == {"y"}
    assert split_batch((x, torch.zeros(4)), label_key="c")[1].keys() == {"c"}
    with pytest.raises(ValueError, match="'x'"):
        split_batch({"y": x})
    with pytest.raises(ValueError, match="float x0"):
        split_batch(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="prediction"):
        DiffusionLoss(VPSDE(), "noise")
    with pytest.raises(ValueError, match="weighting"):
        DiffusionLoss(VPSDE(), weighting="snr")
    with pytest.raises(ValueError, match="p_uncond"):
        DiffusionLoss(VPSDE(), p_uncond=1.5)
    with pytest.raises(TypeError, match="t_sampler"):
        DiffusionLoss(VPSDE(), t_sampler="uniform")
    with pytest.raises(TypeError, match="schedule"):
        DiffusionLoss("vp")
    with pytest.raises(TypeError, match="null_condition"):
        DiffusionLoss(VPSDE(), p_uncond=0.5)(lambda x, t, y: x, (x, torch.zeros(4, dtype=torch.long)))
