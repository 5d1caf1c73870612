"""Tests for lib/rl/study.py: the study command writes a results file with provenance."""

import pytest

from lib.rl.study import configs, main
from lib.utils import load_results


def test_study_command_smoke(tmp_path):
    out = tmp_path / "study.json"
    assert main(["--seeds", "0", "--total-steps", "256", "--methods", "A2C", "--out", str(out)]) == 0
    payload = load_results(out)
    run = payload["results"]["runs"]["A2C"][0]
    assert run["eval_steps"][-1] == 256 and "command" in payload["provenance"]
    assert len(run["train_returns"]) == len(run["eval_steps"])


def test_methods_share_the_common_fields():
    cfgs = {name: cfg for name, (_, cfg) in configs(seed=1, total_steps=5000).items()}
    assert set(cfgs) == {"REINFORCE+baseline", "QAC", "A2C"}
    for field in ("num_envs", "n_steps", "lr", "gamma", "hidden", "total_steps", "seed"):
        assert len({getattr(c, field) for c in cfgs.values()}) == 1, field
    assert set(configs(0, 1000, "Pendulum-v1")) == {"A2C"}
    with pytest.raises(ValueError, match="env_id"):
        configs(0, 1000, "MountainCar-v0")
