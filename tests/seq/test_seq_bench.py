"""lib/seq/bench.py: the three layers compute what they claim, and the timing run returns one time per length."""

import json

import pytest
import torch

from lib.seq.bench import LAYERS, SequentialBenchConfig, main, sequence_layers, time_layers


def test_loop_and_fused_rnn_are_the_same_layer():
    torch.manual_seed(0)
    layers = sequence_layers(8, 2)
    x = torch.randn(2, 11, 8)
    with torch.no_grad():
        loop, fused = layers["rnn_loop"](x)[0], layers["rnn_fused"](x)[0]
        assert layers["attention"](x, x, x).shape == (2, 11, 8)
    torch.testing.assert_close(loop, fused, atol=1e-5, rtol=1e-5)


def test_time_layers_and_cli(tmp_path):
    times = time_layers(SequentialBenchConfig(lengths=(3, 5), width=8, heads=2, repeat=1, warmup=0))
    assert times["lengths"] == [3, 5] and all(len(times[n]) == 2 and min(times[n]) > 0 for n in LAYERS)
    out = tmp_path / "b.json"
    assert (
        main(["--lengths", "4", "--width", "8", "--heads", "2", "--repeat", "1", "--device", "cpu", "--out", str(out)])
        == 0
    )
    payload = json.loads(out.read_text())
    assert payload["results"]["device"] == "cpu" and len(payload["results"]["times_s"]["attention"]) == 1
    with pytest.raises(ValueError, match="lengths"):
        SequentialBenchConfig(lengths=(0,))
    with pytest.raises(ValueError, match="bad sizes"):
        SequentialBenchConfig(width=10, heads=4)
