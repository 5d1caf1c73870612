import math

import pytest
import torch

from lib.train import History, OptimizerStep, one_cycle, train
from lib.utils import seed_everything


def _regression(seed=0):
    g = seed_everything(seed)
    X = torch.randn(256, 4, generator=g)
    w = torch.randn(4, 1, generator=g)
    y = X @ w
    return X, y


def _mse(model, batch):
    x, y = batch
    return torch.nn.functional.mse_loss(model(x), y)


def test_train_fits_linear_model_and_logs():
    X, y = _regression()
    model = torch.nn.Linear(4, 1)
    hist = train(model, _mse, [(X, y)], steps=200, lr=0.05, log_every=10)
    assert hist.steps[0] == 0 and hist.steps[-1] == 199
    assert len(hist.metrics["loss"]) == 21
    assert hist.last("loss") < 1e-3 < hist.metrics["loss"][0]
    assert hist.seconds > 0


def test_train_accepts_batch_function_and_dict_loss_and_eval():
    X, y = _regression()
    model = torch.nn.Linear(4, 1)

    def loss_fn(m, b):
        loss = _mse(m, b)
        return {"loss": loss, "half": loss / 2}

    def eval_fn(m):
        assert not m.training
        return {"mse": _mse(m, (X, y))}

    hist = train(model, loss_fn, lambda step: (X, y), steps=30, eval_fn=eval_fn, eval_every=10)
    assert [e["step"] for e in hist.evals] == [9, 19, 29]
    assert hist.metrics["half"][-1] == pytest.approx(hist.metrics["loss"][-1] / 2)
    assert model.training


def test_grad_clip_and_scaler_are_used():
    X, y = _regression()
    model = torch.nn.Linear(4, 1)
    hist = train(model, _mse, [(X, y)], steps=3, grad_clip=1e-3)
    assert "grad_norm" in hist.metrics
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    hist = train(torch.nn.Linear(4, 1), _mse, [(X, y)], steps=2, scaler=scaler)
    assert hist.metrics["loss_scale"][0] == 8.0


def test_custom_step_fn_replaces_update():
    X, y = _regression()
    model = torch.nn.Linear(4, 1)
    before = [p.detach().clone() for p in model.parameters()]
    seen = []
    hist = train(model, _mse, [(X, y)], steps=4, step_fn=lambda loss: seen.append(float(loss.detach())) or {"k": 1.0})
    assert len(seen) == 4 and hist.metrics["k"] == [1.0] * 4
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_stop_on_nan():
    model = torch.nn.Linear(1, 1)
    hist = train(model, lambda m, b: m(b).sum() * float("nan"), [torch.ones(1, 1)], steps=10, stop_on_nan=True)
    assert hist.steps == [0] and math.isnan(hist.last())


def test_bad_arguments():
    model = torch.nn.Linear(1, 1)
    data = [torch.ones(1, 1)]
    with pytest.raises(ValueError, match="steps"):
        train(model, lambda m, b: m(b).sum(), data, steps=0)
    with pytest.raises(TypeError, match="model"):
        train("nope", lambda m, b: m(b).sum(), data, steps=1)
    with pytest.raises(ValueError, match="eval_every"):
        train(model, lambda m, b: m(b).sum(), data, steps=1, eval_every=2)
    with pytest.raises(ValueError, match="loss"):
        train(model, lambda m, b: {"l": m(b).sum()}, data, steps=1)
    with pytest.raises(ValueError, match="empty"):
        train(model, lambda m, b: m(b).sum(), [], steps=1)
    with pytest.raises(ValueError, match="step_fn"):
        train(model, lambda m, b: m(b).sum(), data, steps=1, step_fn=lambda loss: {}, grad_clip=1.0)
    with pytest.raises(ValueError, match="grad_clip"):
        OptimizerStep(torch.optim.SGD(model.parameters(), lr=0.1), grad_clip=0)


def test_history_last():
    h = History()
    h.log(0, {"loss": 1.0})
    h.log(1, {"loss": 3.0})
    assert h.last(k=2) == 2.0
    with pytest.raises(KeyError):
        h.last("acc")


def test_one_cycle_any_length():
    """torch's OneCycleLR divides by each phase's length; one_cycle keeps both non-zero for short runs and is the
    plain 5% warm-up from 40 steps on."""
    for steps in (1, 2, 3, 5, 20, 39, 40, 1500):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=0.1)
        sched = one_cycle(opt, 0.1, steps)
        for _ in range(steps):
            opt.step()
            sched.step()
    assert one_cycle(opt, 0.1, 1500).total_steps == 1500
    with pytest.raises(ValueError, match="steps"):
        one_cycle(opt, 0.1, 0)
