"""lib/sd3/table1.py: every formulation trains the shared MMDiT and is evaluated by one sampler (seconds)."""

import json

import pytest

from lib.sd3.table1 import KINDS, Table1Config, evaluate, main, make_model, summarise, train_formulation


@pytest.mark.parametrize("kind", KINDS)
def test_each_formulation_trains_and_evaluates(kind):
    config = Table1Config(kind=kind, steps=2, batch_size=16, n_eval=20, eval_steps=(2,), d_model=32, depth=1)
    model, info = train_formulation(config)
    assert info["name"].startswith(kind.split("/")[0]) and info["final_loss"] > 0
    out = evaluate(model, config)
    assert set(out) == {"2"} and 0 <= out["2"]["accuracy"] <= 1 and out["2"]["fd"] > 0


def test_summary_means_and_spreads():
    runs = [{"name": "a", "eval": {"5": {"fd": fd, "accuracy": 0.5}}} for fd in (1.0, 2.0, 3.0)]
    row = summarise(runs)["a"]["5"]
    assert row["fd"]["mean"] == 2.0 and row["fd"]["std"] == 1.0 and row["accuracy"]["std"] == 0.0


def test_command_writes_results(tmp_path):
    out = tmp_path / "t1.json"
    argv = ["--kinds", "rf/lognorm", "--seeds", "0", "1", "--steps", "2", "--n-eval", "20", "--threads", "1"]
    assert main(argv + ["--out", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert len(results["runs"]) == 2 and len(results["table"]["rf/lognorm(0.00, 1.00)"]["5"]["fd"]["values"]) == 2


def test_bad_config():
    with pytest.raises(ValueError, match="kind"):
        Table1Config(kind="rf/beta")
    with pytest.raises(ValueError, match="positive"):
        Table1Config(steps=0)
    assert make_model(Table1Config()).config.num_classes == 10
