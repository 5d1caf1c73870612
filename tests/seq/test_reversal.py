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


def test_save_and_load_model_round_trip(tmp_path):
    from lib.seq.reversal import fit, load_model, save_model

    c = ReversalConfig(
        steps=2, batch_size=4, min_len=2, max_len=4, rnn_hidden=8, d_model=16, models=("lstm-attention",)
    )
    torch.manual_seed(0)
    model = build("lstm-attention", c)
    hist = fit("lstm-attention", model, c)
    path = save_model("lstm-attention", model, hist, c, tmp_path / "m.safetensors")
    back = load_model(path)
    assert back.name == "lstm-attention" and back.config == c
    assert back.history.metrics["loss"] == hist.metrics["loss"] and back.history.steps == hist.steps
    src, tgt = torch.randint(3, c.task.vocab_size, (2, 5)), torch.randint(3, c.task.vocab_size, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(back.model(src, tgt), model.eval()(src, tgt), atol=0, rtol=0)
    with pytest.raises(ValueError, match="name"):
        save_model("mamba", model, hist, c, tmp_path / "x.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # tampered file: the sha256 check fails
    with pytest.raises(ValueError, match="sha256"):
        load_model(path)


def test_cli_save_dir(tmp_path):
    argv = ["--steps", "1", "--batch-size", "2", "--max-len", "3", "--min-len", "2", "--n-test-per-length", "1"]
    assert main([*argv, "--models", "gru", "--rnn-hidden", "4", "--save-dir", str(tmp_path)]) == 0
    assert (tmp_path / "reversal_gru.safetensors").exists() and (tmp_path / "reversal_gru.json").exists()
    with pytest.raises(SystemExit):
        main([*argv, "--save-dir", str(tmp_path), "--seeds", "0", "1"])


def test_load_model_rejects_a_foreign_checkpoint(tmp_path):
    from lib.checkpoint import save_checkpoint
    from lib.seq.reversal import load_model

    path = save_checkpoint(tmp_path / "f.safetensors", {"w": torch.zeros(2)}, command="test", seed=0, config={})
    with pytest.raises(ValueError, match="save_model"):
        load_model(path)
