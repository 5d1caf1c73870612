"""DynamicLossScaler vs torch.amp.GradScaler and MasterWeightStep (lib/precision/scaler.py, master.py)."""

import pytest
import torch

from lib.precision import DynamicLossScaler, MasterWeightStep
from lib.precision.scaler import torch_gradscaler_scales as gradscaler_scales


@pytest.mark.parametrize(
    "kw", [{}, {"growth_interval": 3}, {"init_scale": 1000.0, "growth_factor": 3.0, "backoff_factor": 0.3}]
)
def test_same_scales_as_gradscaler(kw):
    g = torch.Generator().manual_seed(0)
    kw = {"growth_interval": 5, **kw}
    pattern = [bool(b) for b in (torch.rand(200, generator=g) < 0.1)] + [False] * 30 + [True] * 3
    ours = DynamicLossScaler(**kw)
    assert [ours.update(b) for b in pattern] == gradscaler_scales(pattern, **kw)
    assert ours.skipped_steps == sum(pattern)


def test_default_growth_and_backoff():
    s = DynamicLossScaler()
    assert s.scale == 2.0**16
    for _ in range(1999):
        s.update(False)
    assert s.scale == 2.0**16
    assert s.update(False) == 2.0**17
    assert s.update(True) == 2.0**16 and s.growth_tracker == 0


def test_unscale_detects_inf():
    s = DynamicLossScaler(init_scale=4.0)
    g = [torch.tensor([4.0, 8.0]), None]
    assert s.unscale_(g) is False and torch.equal(g[0], torch.tensor([1.0, 2.0]))
    assert s.unscale_([torch.tensor([float("inf")])]) is True


def test_bad_arguments():
    for kw, name in [
        ({"init_scale": 0.0}, "init_scale"),
        ({"growth_factor": 1.0}, "growth_factor"),
        ({"backoff_factor": 1.0}, "backoff_factor"),
        ({"growth_interval": 0}, "growth_interval"),
    ]:
        with pytest.raises(ValueError, match=name):
            DynamicLossScaler(**kw)
    with pytest.raises(TypeError, match="found_inf"):
        DynamicLossScaler().update("yes")


def test_master_step_matches_fp32_sgd_and_skips_on_overflow():
    torch.manual_seed(0)
    ref = torch.nn.Linear(4, 3)
    model = torch.nn.Linear(4, 3).half()
    model.load_state_dict(ref.state_dict())
    step = MasterWeightStep(model, lambda ps: torch.optim.SGD(ps, lr=0.1), DynamicLossScaler(init_scale=2.0**10))
    assert all(w.dtype == torch.float32 for w in step.master)
    x = torch.randn(8, 4)
    out = step(model(x.half()).float().pow(2).mean())
    assert out == {"loss_scale": 2.0**10, "skipped": 0.0}
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    ref(x).pow(2).mean().backward()
    ref_opt.step()
    for w, r, p in zip(step.master, ref.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(w, r, atol=2e-3, rtol=1e-2)  # FP16 forward/backward, FP32 update
        assert torch.equal(p.float(), w.to(torch.float16).float())  # the model holds the rounded masters
    before = [w.detach().clone() for w in step.master]
    out = step(model(x.half()).float().pow(2).mean() * 1e10)  # gradients overflow FP16
    assert out["skipped"] == 1.0 and step.scaler.scale == 2.0**9
    assert all(torch.equal(a, b) for a, b in zip(before, step.master, strict=True))


def test_master_step_bad_input():
    with pytest.raises(TypeError, match="model"):
        MasterWeightStep("net", torch.optim.SGD)
    with pytest.raises(TypeError, match="scaler"):
        MasterWeightStep(torch.nn.Linear(2, 2), torch.optim.SGD, scaler=torch.amp.GradScaler("cpu"))
