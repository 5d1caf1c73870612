"""lib/sd3/qknorm_study.py: the synthetic task, logit logging, the QK-norm bound, the command (seconds)."""

import json
import math

import pytest
import torch

from lib.sd3.qknorm_study import QKNormConfig, main, run, synthetic_task

TINY = dict(steps=4, n_data=32, batch_size=8, d_model=32, depth=1, heads=4)


def test_synthetic_task_is_deterministic_and_text_dependent():
    c = QKNormConfig(**TINY)
    x0, ctx = synthetic_task(c)
    assert x0.shape == (32, 4, 8, 8) and ctx.shape == (32, 8, 16)
    assert torch.equal(x0, synthetic_task(c)[0])
    # the latents are a linear function of the tokens (plus 0.1 noise): most of their variance is explained
    sol = torch.linalg.lstsq(ctx.reshape(32, -1), x0.reshape(32, -1)).solution
    resid = x0.reshape(32, -1) - ctx.reshape(32, -1) @ sol
    assert float(resid.var() / x0.var()) < 0.05


@pytest.mark.parametrize("qk_norm", [False, True])
def test_run_logs_loss_and_max_logit_per_step(qk_norm):
    r = run(QKNormConfig(qk_norm=qk_norm, **TINY))
    assert len(r["loss"]) == len(r["max_logit"]) == 4 and r["finite"]
    assert all(math.isfinite(v) and v > 0 for v in r["max_logit"])
    if qk_norm:  # unit-RMS q and k (gains start at 1): |q . k| / sqrt(d_h) <= sqrt(d_h) at the first step
        assert r["max_logit"][0] <= math.sqrt(32 // 4) * 1.02


def test_command_writes_results(tmp_path):
    out = tmp_path / "qk.json"
    assert main(["--lrs", "1e-3", "--seeds", "0", "--steps", "2", "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    runs = payload["results"]["runs"]
    assert [r["config"]["qk_norm"] for r in runs] == [False, True] and "provenance" in payload


def test_bad_config():
    with pytest.raises(ValueError, match="batch_size"):
        QKNormConfig(batch_size=64, n_data=32)
    with pytest.raises(ValueError, match="lr"):
        QKNormConfig(lr=0.0)
