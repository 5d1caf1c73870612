"""The study's arms and records, smoke-sized (lib/precision/study.py)."""

import math

import pytest
import torch

from lib.data.digits import load_digits
from lib.precision.study import ARMS, final_losses, main, run_arm, summarize, v_zero_fraction


@pytest.fixture(scope="module")
def data():
    d = load_digits("train")
    return d.x[:48], d.y[:48]


def test_arms_and_records(data):
    x, y = data
    runs = run_arm("adam_eps", x, y, seed=1, modes=("fp16",))
    rec = summarize(runs["fp16"])
    assert rec["steps_run"] == 200 and rec["skipped_steps"] == 0 and rec["final_loss"] is not None
    assert 0 < rec["v_zero_fraction"] <= 1  # eps = 1e-4 keeps FP16 Adam finite while v underflows
    assert summarize(run_arm("main", x, y, modes=("fp16",))["fp16"])["final_loss"] is None  # NaN -> None
    assert v_zero_fraction(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)) is None
    assert set(ARMS) >= {"main", "adam_eps", "sgd", "underflow", "swamping", "fp8", "fp8_underflow"}


def test_bad_arm(data):
    x, y = data
    with pytest.raises(ValueError, match="arm"):
        run_arm("fp4", x, y)
    with pytest.raises(ValueError, match="init"):
        run_arm("swamping", x, y)


def test_entry_point_writes_results(tmp_path, monkeypatch):
    import lib.precision.study as study

    monkeypatch.setattr(study, "ARMS", {"main": (ARMS["main"][0], ("fp32",))})
    threads = torch.get_num_threads()
    try:
        out = main(["--seeds", "0", "--arms", "main", "--out", str(tmp_path / "s.json")])
    finally:
        torch.set_num_threads(threads)
    from lib.utils import load_results

    res = load_results(out)
    assert res["results"]["arms"]["main"]["runs"]["fp32"][0]["seed"] == 0
    assert "python -m lib.precision.study" in res["provenance"]["command"]


def test_final_losses():
    payload = {"arms": {"main": {"runs": {"fp16": [{"final_loss": None}, {"final_loss": 0.5}]}}}}
    out = final_losses(payload, "main", "fp16")
    assert math.isnan(out[0]) and out[1] == 0.5
    with pytest.raises(ValueError, match="no runs"):
        final_losses(payload, "main", "fp32")
