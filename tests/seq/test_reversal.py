"""lib/seq/reversal.py: the experiment's command runs end to end (tiny CPU smoke run) and writes results."""

import json

import pytest
import torch

from lib.seq.reversal import ReversalConfig, build, main, run


def test_run_smoke():
    c = ReversalConfig(
        steps=3, batch_size=8, min_len=2, max_len=4, n_test_per_length=2, d_model=16, d_ff=16, rnn_hidden=8, warmup=2
    )
    res = run(c, device=torch.device("cpu"))
    assert set(res) == {"transformer", "lstm", "gru", "lstm-attention"}
    for r in res.values():
        assert set(r["accuracy_by_length"]) == {2, 3, 4} and 0.0 <= r["accuracy_len_ge_20"] <= 1.0


def test_cli_writes_results(tmp_path):
    out = tmp_path / "r.json"
    argv = [
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--max-len",
        "6",
        "--min-len",
        "3",
        "--pad-source",
        "right",
        "--models",
        "transformer",
        "gru",
        "--n-test-per-length",
        "1",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    payload = json.loads(out.read_text())
    assert "provenance" in payload and set(payload["results"]["results"]) == {"transformer", "gru"}


def test_build_rejects_unknown_model():
    with pytest.raises(ValueError, match="model name"):
        build("mamba", ReversalConfig())


def test_cli_with_seeds_varies_init_and_data(tmp_path):
    out = tmp_path / "s.json"
    argv = ["--steps", "2", "--batch-size", "4", "--max-len", "4", "--min-len", "2", "--n-test-per-length", "1"]
    argv += ["--models", "gru-attention", "--rnn-hidden", "8", "--seeds", "0", "3", "--out", str(out)]
    assert main(argv) == 0
    payload = json.loads(out.read_text())["results"]
    assert set(payload["seeds"]) == {"0", "3"} and set(payload["seeds"]["3"]) == {"gru-attention"}
    assert payload["config"]["models"] == ["gru-attention"]
