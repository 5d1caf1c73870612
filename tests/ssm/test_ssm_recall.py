"""Recall-task training (lib/ssm/recall.py): smoke runs of the loop, the study command and checkpoint loading."""

import dataclasses
import json
import math

import pytest
import torch

from lib.checkpoint import save_checkpoint
from lib.ssm import recall


def test_fit_smoke_and_loss():
    c = recall.RecallConfig(L=12, K=3, V=4, d_model=8, d_state=4, batch=8, steps=3, eval_every=2, n_eval=16)
    model, hist = recall.fit(c)
    assert len(hist.evals) == 2 and 0.0 <= hist.evals[-1]["acc"] <= 1.0
    b = recall.make_batch(c, 4, torch.Generator().manual_seed(0))
    out = recall.recall_loss(model, b)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])


def test_study_command_writes_results(tmp_path):
    out = tmp_path / "r.json"
    argv = ["induction", "--steps", "2", "--L", "8", "--seeds", "0", "--mixers", "s4d", "--lengths", "8", "16",
            "--no-ship", "--out", str(out)]  # fmt: skip
    assert recall.main(argv) == 0
    res = json.loads(out.read_text())
    assert "provenance" in res and set(res["results"]["runs"][0]["acc_at_length"]) == {"8", "16"}


def test_checkpoint_roundtrip(tmp_path):
    c = recall.RecallConfig(L=8, K=2, V=3, d_model=8, d_state=4)
    model = recall.MambaLM(c.model_config())
    path = save_checkpoint(tmp_path / "m.safetensors", model.state_dict(), command="test", seed=0,
                           config=dataclasses.asdict(c))  # fmt: skip
    loaded, c2 = recall.load_model(path)
    assert c2 == c
    x = torch.randint(0, c.vocab_size, (2, 10))
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_fit_threads_argument():
    c = recall.RecallConfig(L=8, K=2, V=3, d_model=8, d_state=4, batch=4, steps=1, n_eval=4)
    before = torch.get_num_threads()
    try:
        recall.fit(c, threads=1)
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="threads"):
            recall.fit(c, threads=0)
    finally:
        torch.set_num_threads(before)


def test_config_errors():
    with pytest.raises(ValueError, match="task must be"):
        recall.RecallConfig(task="copy")
    with pytest.raises(ValueError, match="steps must be a positive int"):
        recall.RecallConfig(steps=0)
    with pytest.raises(ValueError, match="warmup must be"):
        recall.RecallConfig(warmup=1.0)
    with pytest.raises(ValueError, match="schedule must be"):
        recall.RecallConfig(schedule="linear")
    with pytest.raises(ValueError, match="lr must be positive"):
        recall.RecallConfig(lr=0.0)


def test_lr_factor_warmup_cosine_constant():
    c = recall.RecallConfig(steps=100, warmup=0.1)
    f = [recall.lr_factor(c, s, 100) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(math.cos(math.pi * 9 / 100) / 2 + 0.5)
    assert max(f) <= 1.0 and f[-1] < 0.01  # cosine ends near 0
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))  # decreasing after the warm-up
    k = dataclasses.replace(c, schedule="constant", warmup=0.0)
    assert [recall.lr_factor(k, s, 100) for s in (0, 50, 99)] == [1.0, 1.0, 1.0]


def test_probe_command_writes_and_merges(tmp_path, monkeypatch):
    monkeypatch.setitem(recall.PROBES, "tiny lr", {"lr": 1e-4})
    out = tmp_path / "p.json"
    base = ["probe", "--steps", "2", "--L", "8", "--batch", "4", "--threads", "1", "--out", str(out)]
    assert recall.main([*base, "--only", "base"]) == 0
    assert recall.main([*base, "--only", "tiny lr"]) == 0
    res = json.loads(out.read_text())
    probes = res["results"]["probes"]
    assert "provenance" in res and set(probes) == {"base", "tiny lr"}  # the second run kept the first's probe
    assert probes["tiny lr"]["change"] == {"lr": 1e-4} and len(probes["base"]["acc"]) == 1
    with pytest.raises(ValueError, match="unknown probes"):
        recall.run_probes(["nope"], recall.RecallConfig(), out, "test")


def test_probe_changes_are_config_fields():
    fields = {f.name for f in dataclasses.fields(recall.RecallConfig)}
    assert recall.PROBES["base"] == {} and all(set(ch) <= fields for ch in recall.PROBES.values())


def test_ship_tag_saves_every_seed_and_records_it(tmp_path, monkeypatch):
    monkeypatch.setattr(recall, "WEIGHTS_DIR", tmp_path / "w")
    out = tmp_path / "r.json"
    argv = ["copying", "--steps", "2", "--L", "8", "--batch", "4", "--seeds", "3", "4", "--mixers", "s4d",
            "--threads", "1", "--no-ship", "--ship-tag", "t", "--out", str(out)]  # fmt: skip
    assert recall.main(argv) == 0
    runs = json.loads(out.read_text())["results"]["runs"]
    assert [r["weights"] for r in runs] == [
        "ssm_copying_s4d_t_seed3.safetensors",
        "ssm_copying_s4d_t_seed4.safetensors",
    ]
    assert sorted(p.name for p in (tmp_path / "w").glob("*.safetensors")) == [r["weights"] for r in runs]
    assert not (tmp_path / "w" / "ssm_copying_s4d.safetensors").exists()  # --no-ship: no untagged file
    model, c = recall.load_model(tmp_path / "w" / runs[1]["weights"])
    assert c.seed == 4 and c.steps == 2
