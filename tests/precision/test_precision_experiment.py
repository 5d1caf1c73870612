"""The chapter's runs (five main modes, the FP8 and ablation modes), smoke-sized (lib/precision/experiment.py)."""

import pytest
import torch

from lib.data.digits import load_digits
from lib.precision.experiment import (
    MODES,
    DigitsRunConfig,
    gradient_sample,
    make_mlp,
    train_digits,
    underflow_fraction,
)


@pytest.fixture(scope="module")
def data():
    d = load_digits("train")
    return d.x[:256], d.y[:256]


def test_main_modes_smoke(data):
    x, y = data
    cfg = DigitsRunConfig(hidden=32, steps=15, lr=3e-3)
    runs = {m: train_digits(m, x, y, cfg) for m in MODES}
    ref = runs["fp32"].final_loss
    assert ref < 2.2  # it learns
    for m in ("fp16_master", "bf16"):
        assert abs(runs[m].final_loss - ref) / ref < 0.05, (m, runs[m].final_loss, ref)
    # pure FP16 Adam: (1 - beta2) g^2 and eps underflow to 0, the update is m / 0
    assert not torch.isfinite(torch.tensor(runs["fp16"].final_loss))
    assert next(runs["fp16"].model.parameters()).dtype == torch.float16


def test_sgd_runs_and_bad_mode(data):
    x, y = data
    r = train_digits("fp16_master", x, y, DigitsRunConfig(hidden=16, steps=3, optimizer="sgd", lr=0.1))
    assert len(r.history.metrics["loss_scale"]) == 3
    nm = train_digits("fp16_no_master", x, y, DigitsRunConfig(hidden=16, steps=3, optimizer="sgd", lr=0.1))
    params = list(nm.model.parameters())
    assert params[0].dtype == torch.float16 and isinstance(nm.optimizer, torch.optim.SGD)
    masters = [w for g in nm.optimizer.param_groups for w in g["params"]]
    assert all(w.dtype == torch.float32 for w in masters)  # FP32 optimizer and state ...
    assert all(torch.equal(w, p.float()) for w, p in zip(masters, params, strict=True))  # ... no master memory
    with pytest.raises(ValueError, match="mode"):
        train_digits("fp4", x, y)
    with pytest.raises(ValueError, match="optimizer"):
        train_digits("fp32", x, y, DigitsRunConfig(steps=1, optimizer="lion"))
    with pytest.raises(ValueError, match="x must be"):
        train_digits("fp32", x.flatten(1), y)


def test_gradient_sample_and_underflow(data):
    x, y = data
    model = make_mlp(DigitsRunConfig(hidden=16))
    gs = gradient_sample(model, x, y)
    assert gs.weights.numel() == sum(p.numel() for p in model.parameters())
    assert gs.activations.numel() == 256 * (16 + 16 + 16 + 16 + 10)  # 2 x (Linear, ReLU) + Linear outputs
    g = torch.tensor([1.0, 2.0**-20, 2.0**-26, 0.0, 2.0**-30])
    assert underflow_fraction(g) == 0.5  # 2 of the 4 non-zero entries flush to zero in FP16
    assert underflow_fraction(g, torch.bfloat16) == 0.0
    with pytest.raises(TypeError, match="g must be"):
        underflow_fraction(torch.tensor([1, 2]))


def test_loss_weight_init_and_optimizer(data):
    x, y = data
    cfg = DigitsRunConfig(hidden=16, steps=3, lr=1e-2)
    a = train_digits("fp32", x, y, cfg)
    b = train_digits("fp32", x, y, DigitsRunConfig(hidden=16, steps=3, lr=1e-2, loss_weight=2.0**-4))
    assert b.history.metrics["loss"][0] == a.history.metrics["loss"][0] * 2.0**-4  # the logged loss is weighted
    assert isinstance(a.optimizer, torch.optim.Adam) and a.optimizer.defaults["eps"] == 1e-8
    c = train_digits("fp32", x, y, DigitsRunConfig(hidden=16, steps=1, lr=0.0), init=a.model.state_dict())
    assert c.final_loss == pytest.approx(a.final_loss, rel=1e-6)  # lr 0: the initial state is a's final one
    assert train_digits("fp8", x, y, DigitsRunConfig(hidden=16, steps=2)).history.steps == [0, 1]
    with pytest.raises(ValueError, match="loss_weight"):
        train_digits("fp32", x, y, DigitsRunConfig(loss_weight=0.0))
