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


def _tiny(**overrides) -> ToyConfig:
    """A toy study small enough for a unit test (tiny networks, one solver step)."""
    base = dict(n_train=256, n_test=64, batch=32, cnf_solver_steps=1, realnvp=RealNVPConfig(couplings=2, hidden=8),
                velocity=MLPConfig(dim=2, hidden=8, depth=1, time_dim=8))  # fmt: skip
    return ToyConfig(**{**base, **overrides})


def test_smoke_run_and_reflow():
    c = _tiny(flow_steps=3, fm_steps=3, cnf_steps=2)
    r = run_toy(c)
    for kind in ("realnvp", "cnf", "fm"):
        assert r[kind]["nll"] == r[kind]["nll"] and r[kind]["params"] > 0
    student, info = reflow(r["models"]["fm"], "moons", ReflowConfig(pairs=64, steps=2, batch=16))
    table = few_step_table(student, "moons", 32, torch.Generator().manual_seed(0), steps=(1, 2))
    assert set(table["energy"]) == {"1", "2", "ode"} and table["reference"] > 0
    with pytest.raises(ValueError, match="kinds"):
        run_toy(c, ("gan",))


def test_length_probe_and_curves():
    from lib.flows.toys import length_probe

    c = _tiny(n_test=32)
    rows = length_probe(c, "realnvp", (2, 4))
    assert [r["steps"] for r in rows] == [2, 4] and rows[1]["curve"]["steps"][-1] == 3
    (cnf,) = length_probe(c, "cnf", (2,), tight=True)
    assert {"nll", "nll_tight", "nll_train_solver"} <= set(cnf) and cnf["nfe_tight"] >= cnf["nfe"]
    with pytest.raises(ValueError, match="kind"):
        length_probe(c, "fm", (2,))
    curve = run_toy(ToyConfig(**{**c.__dict__, "flow_steps": 3}), ("realnvp",))["realnvp"]["curve"]
    assert curve["steps"] == [0, 1, 2] and len(curve["loss"]) == 3


def test_energy_noise_is_the_perfect_sampler_spread():
    from lib.flows.toys import energy_noise
    from lib.metrics import mean_pairwise_distance

    g = torch.Generator().manual_seed(0)
    v = torch.tensor(energy_noise("rings", 200, 40, g))
    assert v.shape == (40,) and (v > 0).all() and v.std() > 0.2 * v.mean()  # positive, and noisy
    scale = 2 * mean_pairwise_distance(toy_sample("rings", 2000, g)) / 200  # the V-statistic's bias, 2 E|X-X'| / n
    assert 0.5 * scale < float(v.mean()) < 2 * scale
    with pytest.raises(ValueError, match="pairs"):
        energy_noise("rings", 10, 0, g)


def test_paired_reflow_eval_scores_one_model_as_its_own_teacher():
    from lib.flows.toys import paired_reflow_eval

    c = ToyConfig(
        n_train=256, n_test=32, batch=32, fm_steps=3, velocity=MLPConfig(dim=2, hidden=8, depth=1, time_dim=8)
    )
    model = run_toy(c, ("fm",))["models"]["fm"]
    out = paired_reflow_eval(model, model, "moons", 64, 2, torch.Generator().manual_seed(0))
    assert set(out) == {"teacher_ode", "student_1", "student_ode", "reference"}
    assert all(len(v) == 2 for v in out.values())
    assert out["teacher_ode"] == pytest.approx(out["student_ode"])  # same model, same draw: the same score
    with pytest.raises(ValueError, match="draws"):
        paired_reflow_eval(model, model, "moons", 64, 0, torch.Generator())


def test_main_noise_and_reflow_options(tmp_path):
    import json

    from lib.flows.toys import main

    out = tmp_path / "noise.json"
    assert main(["--names", "moons", "--noise", "2", "--threads", "1", "--out", str(out)]) == 0
    assert len(json.loads(out.read_text())["results"]["noise"]["moons"]) == 2
