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


@pytest.mark.parametrize(
    "kw",
    [
        {"init_scale": 2.0**12, "growth_interval": 3},
        {"init_scale": 1000.0, "growth_factor": 3.0, "backoff_factor": 0.3, "growth_interval": 2},
    ],
)
def test_master_step_matches_torch_gradscaler(kw):
    """Oracle: on an FP32 model, MasterWeightStep + DynamicLossScaler == Adam driven by torch.amp.GradScaler,
    bit for bit (parameters, scales, skipped steps), through overflows and a non-power-of-two scale."""
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    ours_model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))
    ref_model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))
    ref_model.load_state_dict(ours_model.state_dict())
    step = MasterWeightStep(ours_model, lambda ps: torch.optim.Adam(ps, lr=1e-2), DynamicLossScaler(**kw))
    ref_opt = torch.optim.Adam(ref_model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", **kw)
    overflow = {2, 3, 9, 15}
    for i in range(20):
        x, y = torch.randn(16, 5, generator=g), torch.randn(16, 2, generator=g)
        bad = float("inf") if i in overflow else 1.0
        out = step(bad * (ours_model(x) - y).pow(2).mean())
        scaler.scale(bad * (ref_model(x) - y).pow(2).mean()).backward()
        scaler.step(ref_opt)
        scaler.update()
        ref_opt.zero_grad(set_to_none=True)
        assert out["skipped"] == float(i in overflow)
        assert step.scaler.scale == scaler.get_scale()
        for a, b in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
            assert torch.equal(a, b), i
    assert step.scaler.skipped_steps == len(overflow)


def test_keep_master_false_loses_sub_ulp_updates():
    """The ablation: without persistent masters, updates below half an FP16 ulp are lost every step."""
    w0 = torch.full((1, 4), 1.0)
    runs = {}
    for keep in (True, False):
        lin = torch.nn.Linear(4, 1, bias=False).half()
        with torch.no_grad():
            lin.weight.copy_(w0)
        step = MasterWeightStep(lin, lambda ps: torch.optim.SGD(ps, lr=1.0), keep_master=keep)
        for _ in range(100):
            step(lin.weight.float().sum() * 2.0**-13)  # dw = -2^-13: a quarter of FP16's ulp at 1
            if not keep:
                assert torch.equal(step.master[0], lin.weight.float())  # masters == rounded weights
        runs[keep] = (lin.weight.float(), step.master[0].detach())
    assert torch.equal(runs[False][0], w0)  # every update swamped
    torch.testing.assert_close(runs[True][1], w0 - 100 * 2.0**-13, rtol=0, atol=1e-7)  # masters keep them
    assert torch.equal(runs[True][0], (w0 - 100 * 2.0**-13).half().float())


def test_master_step_bad_input():
    with pytest.raises(TypeError, match="model"):
        MasterWeightStep("net", torch.optim.SGD)
    with pytest.raises(TypeError, match="scaler"):
        MasterWeightStep(torch.nn.Linear(2, 2), torch.optim.SGD, scaler=torch.amp.GradScaler("cpu"))
    with pytest.raises(TypeError, match="keep_master"):
        MasterWeightStep(torch.nn.Linear(2, 2), torch.optim.SGD, keep_master=1)
