"""Tests for lib/rl/study.py: the study command writes a results file with provenance."""

import pytest

from lib.rl.study import METHODS, configs, main, merge_results, run_study, summarise
from lib.utils import load_results


def test_study_command_smoke(tmp_path):
    out = tmp_path / "study.json"
    assert main(["--seeds", "0", "--total-steps", "256", "--methods", "A2C", "--out", str(out)]) == 0
    payload = load_results(out)
    run = payload["results"]["runs"]["A2C"][0]
    assert run["eval_steps"][-1] == 256 and "command" in payload["provenance"]
    assert len(run["train_returns"]) == len(run["eval_steps"])
    assert len(run["final_returns"]) == 20
    assert sum(run["final_returns"]) / 20 == pytest.approx(run["final_eval"])  # the same 20 episodes
    # --merge adds an arm and its own provenance, keeping the file's runs and provenance
    assert main(["--seeds", "0", "--total-steps", "256", "--methods", "QAC", "--merge", "--out", str(out)]) == 0
    merged = load_results(out)
    assert merged["provenance"] == payload["provenance"] and merged["results"]["runs"]["A2C"] == [run]
    assert merged["results"]["runs"]["QAC"][0]["eval_steps"][-1] == 256
    assert (
        merged["results"]["added"][0]["methods"] == ["QAC"]
        and "--merge" in merged["results"]["added"][0]["provenance"]["command"]
    )
    with pytest.raises(ValueError, match="already there"):
        merge_results(out, [0], 256, ["QAC"])
    with pytest.raises(ValueError, match="seeds"):
        merge_results(out, [1], 256, ["QAC+baseline"])
    with pytest.raises(ValueError, match="methods"):
        merge_results(out, [0], 256, None)


@pytest.mark.slow  # two spawned worker processes import torch and gymnasium
def test_workers_do_not_change_the_results():
    kwargs = {"total_steps": 128, "methods": ["QAC+baseline"]}
    one, two = run_study([0, 1], workers=1, **kwargs), run_study([0, 1], workers=2, **kwargs)
    for name in kwargs["methods"]:
        for a, b in zip(one["runs"][name], two["runs"][name], strict=True):
            assert a["eval_returns"] == b["eval_returns"] and a["final_returns"] == b["final_returns"]
    with pytest.raises(ValueError, match="methods"):
        run_study([0], total_steps=256, methods=["PPO"])
    with pytest.raises(ValueError, match="workers"):
        run_study([0], total_steps=256, workers=0)


def test_methods_share_the_common_fields():
    cfgs = {name: cfg for name, (_, cfg) in configs(seed=1, total_steps=5000).items()}
    assert tuple(cfgs) == METHODS
    for field in ("num_envs", "n_steps", "lr", "gamma", "hidden", "total_steps", "seed", "max_grad_norm"):
        assert len({getattr(c, field) for c in cfgs.values()}) == 1, field
    # each ablation differs from its reference arm in exactly the field it names
    for arm, ref, field in (
        ("QAC+baseline, lambda-critic", "QAC+baseline", "critic_lambda"),
        ("QAC+baseline, slow actor", "QAC+baseline", "actor_lr_scale"),
        ("QAC critic, GAE weight", "QAC+baseline", "actor_lambda"),
        ("QAC critic, TD-error weight", "QAC+baseline", "actor_lambda"),
        ("A2C, constant lr", "A2C", "anneal_lr"),
        ("REINFORCE+baseline, constant lr", "REINFORCE+baseline", "anneal_lr"),
    ):
        a, b = vars(cfgs[arm]), vars(cfgs[ref])
        assert [k for k in a if a[k] != b[k]] == [field], arm
    # "QAC+baseline" is not a one-field ablation of "QAC": it adds two baselines (V_Q and standardisation)
    a, b = vars(cfgs["QAC+baseline"]), vars(cfgs["QAC"])
    assert sorted(k for k in a if a[k] != b[k]) == ["baseline", "normalize_advantages"]
    assert a["normalize_advantages"] and a["baseline"] and not b["normalize_advantages"] and not b["baseline"]
    assert set(configs(0, 1000, "Pendulum-v1")) == {"A2C"}
    with pytest.raises(ValueError, match="env_id"):
        configs(0, 1000, "MountainCar-v0")


def test_summarise_a_hand_made_run():
    run = {
        "eval_steps": [10, 20, 30, 40],
        "eval_returns": [100.0, 480.0, 300.0, 490.0],
        "eval_entropy": [0.7, 0.6, 0.5, 0.4],
        "solved_at": 20,
        "final_returns": [500.0, 480.0],
    }
    s = summarise(run, target=475.0)
    assert s["after_solve"] == [300.0, 490.0] and s["held"] == 0.5
    assert s["final"] == 490.0 and s["final_min"] == 480.0 and s["best"] == 490.0 and s["entropy_final"] == 0.4
    never = summarise({**run, "solved_at": None}, target=475.0)
    assert never["after_solve"] == [] and never["held"] is None
