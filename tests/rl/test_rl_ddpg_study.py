"""Tests for lib/rl/ddpg_study.py: the command writes a results file with provenance and resumes."""

import pytest

from lib.rl.ddpg_study import VARIANTS, main, run_one
from lib.utils import load_results


def test_variants_switch_one_fix_at_a_time():
    base = VARIANTS["DDPG"]
    assert not base.twin_critics and base.target_noise == 0 and base.policy_delay == 1 and base.noise == "gaussian"
    assert VARIANTS["TD3"].twin_critics and VARIANTS["TD3"].target_noise > 0 and VARIANTS["TD3"].policy_delay == 2
    for name, field in [("DDPG + clipped double Q", "twin_critics"), ("DDPG + target smoothing", "target_noise"),
                        ("DDPG + delayed actor", "policy_delay"), ("DDPG, OU noise", "noise"),
                        ("DDPG, time limit as terminal", "bootstrap_truncated")]:  # fmt: skip
        changed = {f for f in base.__dataclass_fields__ if getattr(VARIANTS[name], f) != getattr(base, f)}
        assert field in changed and changed <= {field, "noise_sigma"}, (name, changed)


def test_study_command_writes_and_resumes(tmp_path, capsys):
    out = tmp_path / "study.json"
    assert main(["--seeds", "0", "--variants", "DDPG", "--total-steps", "200", "--out", str(out)]) == 0
    payload = load_results(out)
    run = payload["results"]["runs"]["DDPG"][0]
    assert run["seed"] == 0 and run["eval_steps"] == [200] and len(run["eval_bias"]) == 1
    assert "lib.rl.ddpg_study" in payload["provenance"]["command"]
    capsys.readouterr()
    main(["--seeds", "0", "--variants", "DDPG", "--total-steps", "200", "--out", str(out), "--resume"])
    assert "seed 0" not in capsys.readouterr().out  # nothing re-run
    assert len(load_results(out)["results"]["runs"]["DDPG"]) == 1


def test_study_errors():
    with pytest.raises(ValueError, match="name"):
        run_one("SAC", 0, 100)
    with pytest.raises(SystemExit):
        main(["--variants", "SAC"])
