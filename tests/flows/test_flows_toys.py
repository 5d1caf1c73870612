"""The 2D study's entry points: smoke runs on CPU in seconds, data and baselines, errors."""

import pytest
import torch

from lib.flows.model import RealNVPConfig
from lib.flows.toys import (
    ReflowConfig,
    ToyConfig,
    few_step_table,
    gaussian_fit_nll,
    reflow,
    run_toy,
    toy_log_prob,
    toy_sample,
)
from lib.nn.unet import MLPConfig


def test_gaussian_fit_nll_is_the_gaussian_entropy_on_gaussian_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50000, 2, generator=g) * torch.tensor([1.0, 2.0])
    entropy = 0.5 * 2 * (1 + torch.log(torch.tensor(2 * torch.pi))) + torch.log(torch.tensor(2.0))
    assert gaussian_fit_nll(x, torch.randn(50000, 2, generator=g) * torch.tensor([1.0, 2.0])) == pytest.approx(
        float(entropy), abs=0.02
    )


def test_toy_data_and_densities():
    g = torch.Generator().manual_seed(0)
    for name in ("moons", "rings", "checkerboard"):
        x = toy_sample(name, 100, g)
        assert x.shape == (100, 2)
        assert torch.isfinite(toy_log_prob(name, x)).all()
    with pytest.raises(ValueError, match="name"):
        toy_sample("spiral", 3)
    with pytest.raises(ValueError, match="name"):
        toy_log_prob("spiral", torch.zeros(1, 2))


def test_smoke_run_and_reflow():
    c = ToyConfig(
        n_train=256,
        n_test=64,
        batch=32,
        flow_steps=3,
        fm_steps=3,
        cnf_steps=2,
        cnf_solver_steps=1,
        realnvp=RealNVPConfig(couplings=2, hidden=8),
        velocity=MLPConfig(dim=2, hidden=8, depth=1, time_dim=8),
    )
    r = run_toy(c)
    for kind in ("realnvp", "cnf", "fm"):
        assert r[kind]["nll"] == r[kind]["nll"] and r[kind]["params"] > 0
    student, info = reflow(r["models"]["fm"], "moons", ReflowConfig(pairs=64, steps=2, batch=16))
    table = few_step_table(student, "moons", 32, torch.Generator().manual_seed(0), steps=(1, 2))
    assert set(table["energy"]) == {"1", "2", "ode"} and table["reference"] > 0
    with pytest.raises(ValueError, match="kinds"):
        run_toy(c, ("gan",))
