"""Smoke run of the benchmark entry point (lib/flash/bench.py) on CPU, and the FLOP count."""

import dataclasses
import json

import pytest
import torch

from lib.flash.bench import CPU_CONFIG, attention_flops, main, run
from lib.flash.memory import measure_peak_memory


def test_flops():
    assert attention_flops(2, 3, 128, 64, False, "fwd") == 4 * 2 * 3 * 128 * 128 * 64
    assert attention_flops(2, 3, 128, 64, True, "fwd") == 2 * 2 * 3 * 128 * 128 * 64
    assert attention_flops(1, 1, 8, 16, False, "fwd_bwd") == 3.5 * attention_flops(1, 1, 8, 16, False, "fwd")


def test_cpu_smoke_run_writes_results(tmp_path):
    out = tmp_path / "bench.json"
    # on a CUDA machine the Triton kernels are compiled, not interpreted, and do not take CPU tensors
    providers = CPU_CONFIG.providers if not torch.cuda.is_available() else ("naive", "sdpa", "blockwise")
    cfg = dataclasses.replace(
        CPU_CONFIG, seq_lens=(32,), causal=(True,), tokens=32, warmup=0, repeat=1, out=str(out), providers=providers
    )
    rows = run(cfg, command="test", verbose=False)
    payload = json.loads(out.read_text())
    assert payload["provenance"]["command"] == "test" and "torch" in payload["provenance"]
    assert [r["provider"] for r in payload["results"]["rows"]] == list(providers)
    for row in rows:
        for mode in ("fwd", "fwd_bwd"):
            assert "error" not in row[mode], row
            assert row[mode]["tflops"] > 0
    if "triton" in providers:
        assert rows[-1]["max_abs_err_vs_fp32"] < 1e-4


def test_failures_are_recorded_not_raised(tmp_path):
    out = tmp_path / "bench.json"
    main(["--cpu", "--seq-lens", "16", "--head-dims", "8", "--causal", "no", "--providers", "naive", "triton",
          "--repeat", "1", "--out", str(out)])  # fmt: skip
    rows = json.loads(out.read_text())["results"]["rows"]
    assert "error" not in rows[0]["fwd"]
    error = rows[1]["fwd"]["error"]  # the Triton kernel rejects d = 8 (or, compiled for CUDA, CPU tensors)
    assert "head_dim must be in" in error or "TRITON_INTERPRET" in error


def test_measure_peak_memory_sees_a_big_allocation():
    nbytes = 64 * 2**20
    mem = measure_peak_memory(lambda: torch.ones(nbytes // 4), device="cpu")
    assert 0.95 * nbytes <= mem.peak_bytes <= 1.2 * nbytes
    with pytest.raises(TypeError, match="fn must be callable"):
        measure_peak_memory(3)


def test_throughput_table_and_plot(tmp_path):
    from lib.flash.bench import plot_throughput, throughput_table
    from lib.plot import figure

    rows = [
        {"provider": "a", "dtype": "float16", "head_dim": 64, "causal": False, "seq": 512, "fwd": {"tflops": 1.0}},
        {"provider": "a", "dtype": "float16", "head_dim": 64, "causal": False, "seq": 1024, "fwd": {"error": "x"}},
        {"provider": "b", "dtype": "float16", "head_dim": 64, "causal": True, "seq": 512, "fwd": {"tflops": 2.0}},
    ]
    assert throughput_table(rows, "float16", 64, False, "fwd") == {"a": {512: 1.0}}
    fig, ax = figure()
    plot_throughput(ax, rows, "float16", 64, True, "fwd")
    assert len(ax.lines) == 1
    with pytest.raises(ValueError, match="mode"):
        throughput_table(rows, "float16", 64, True, "bwd")
