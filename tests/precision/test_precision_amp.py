"""AmpStep, the canonical FP16 AMP step with accumulation and checkpointable state (lib/precision/amp.py)."""

import copy

import pytest
import torch

from lib.precision.amp import AmpStep
from lib.train import OptimizerStep, train
from lib.utils import seed_everything


def _problem(seed=0, n=32):
    g = torch.Generator().manual_seed(seed)
    seed_everything(seed, threads=None, deterministic=False)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    x, y = torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)
    return model, x, y


def loss_fn(model, batch):
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x).float(), y)


def test_k1_equals_optimizer_step_with_gradscaler():
    model, x, y = _problem()
    other = copy.deepcopy(model)
    runs = []
    for m, make in [(model, lambda o, s: AmpStep(o, s, grad_clip=1.0)), (other, lambda o, s: OptimizerStep(o, 1.0, s))]:
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        step = make(opt, torch.amp.GradScaler("cpu", init_scale=2.0**10))
        runs.append(train(m, loss_fn, [(x, y)], 10, autocast_dtype=torch.float16, step_fn=step))
    for a, b in zip(model.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
    assert runs[0].metrics["loss"] == runs[1].metrics["loss"]


def test_accumulation_equals_full_batch_step():
    model, x, y = _problem(n=32)
    full = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = AmpStep(opt, torch.amp.GradScaler("cpu", init_scale=2.0**8), accumulation_steps=4)
    micro = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)]
    h = train(model, loss_fn, micro, 4, step_fn=step)  # FP32 forward: only the accumulation differs
    assert h.metrics["optimizer_step"] == [0.0, 0.0, 0.0, 1.0]
    opt_full = torch.optim.SGD(full.parameters(), lr=0.1)
    loss_fn(full, (x, y)).backward()
    opt_full.step()
    for a, b in zip(model.parameters(), full.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_state_dict_resume_is_bit_identical():
    model, x, y = _problem(n=48)
    micro = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 48, 8)]  # 6 micro-batches

    def fresh(m):
        scaler = torch.amp.GradScaler("cpu", growth_interval=2)
        return AmpStep(torch.optim.Adam(m.parameters(), lr=1e-2), scaler, accumulation_steps=3, grad_clip=1.0)

    straight = copy.deepcopy(model)
    train(straight, loss_fn, micro, 24, autocast_dtype=torch.float16, step_fn=fresh(straight))
    first = copy.deepcopy(model)
    s1 = fresh(first)
    train(first, loss_fn, micro, 12, autocast_dtype=torch.float16, step_fn=s1)
    state = copy.deepcopy({"model": first.state_dict(), "step": s1.state_dict()})
    resumed = copy.deepcopy(model)  # a new process would build these from scratch
    resumed.load_state_dict(state["model"])
    s2 = fresh(resumed)
    s2.load_state_dict(state["step"])
    assert s2.scaler.get_scale() == s1.scaler.get_scale() > 2.0**16  # the scale grew and was restored
    train(resumed, loss_fn, micro, 12, autocast_dtype=torch.float16, step_fn=s2)
    for a, b in zip(resumed.parameters(), straight.parameters(), strict=True):
        assert torch.equal(a, b)


def test_overflow_is_skipped_and_logged():
    model, x, y = _problem()
    before = [p.detach().clone() for p in model.parameters()]
    step = AmpStep(torch.optim.SGD(model.parameters(), lr=0.1), torch.amp.GradScaler("cpu", init_scale=2.0**40))
    h = train(model, lambda m, b: 1e30 * loss_fn(m, b), [(x, y)], 1, step_fn=step)
    assert h.metrics["skipped"] == [1.0] and h.metrics["loss_scale"] == [2.0**39]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_bad_arguments():
    model, _, _ = _problem()
    opt, scaler = torch.optim.SGD(model.parameters(), lr=0.1), torch.amp.GradScaler("cpu")
    with pytest.raises(TypeError, match="optimizer"):
        AmpStep("adam", scaler)
    with pytest.raises(TypeError, match="scaler"):
        AmpStep(opt, None)
    with pytest.raises(ValueError, match="accumulation_steps"):
        AmpStep(opt, scaler, accumulation_steps=0)
    with pytest.raises(ValueError, match="grad_clip"):
        AmpStep(opt, scaler, grad_clip=-1.0)
    with pytest.raises(ValueError, match="missing"):
        AmpStep(opt, scaler).load_state_dict({"optimizer": opt.state_dict()})
