"""Recall-task training (lib/ssm/recall.py): smoke runs of the loop, the study command and checkpoint loading."""

import dataclasses
import json

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
