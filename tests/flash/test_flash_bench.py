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


def test_headline_configurations_run_first():
    from lib.flash.bench import BenchConfig, sweep_order

    order = sweep_order(BenchConfig())
    assert order[:4] == [("float16", 128, False, 4096), ("float16", 128, False, 8192),
                         ("float16", 128, True, 4096), ("float16", 128, True, 8192)]  # fmt: skip
    assert len(order) == len(set(order)) == 6 * 2 * 2 * 2
    assert all(o[:2] == ("float16", 128) for o in order[:12]) and order[-1][0] == "bfloat16"


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="compiled Triton kernels take no CPU tensors (make gpu DRY=1 hides the GPU)"
)
def test_dry_run_records_launch_and_backend(tmp_path):
    """``--dry`` (make gpu DRY=1): the GPU code path at tiny sizes, with the configuration that actually ran."""
    out = main(["--dry", "--out", str(tmp_path / "dry.json")])
    payload = json.loads(out.read_text())
    rows, res = payload["results"]["rows"], payload["results"]
    assert res["complete"] and res["skipped"] == []
    assert {r["provider"] for r in rows} == {"naive", "sdpa", "triton", "triton_atomic"}
    for r in rows:
        assert "error" not in r.get("fwd_bwd", {}), r
    triton = [r for r in rows if r["provider"] == "triton"]
    assert triton[0]["fwd"]["launch"]["fwd"]["source"] == "explicit"  # interpreter: the first candidate
    assert triton[0]["fwd_bwd"]["launch"]["bwd"]["config"]["BLOCK_M1"] >= 16
    assert "fwd" not in [r for r in rows if r["provider"] == "triton_atomic"][0]  # same forward as triton
    sdpa = [r for r in rows if r["provider"] == "sdpa"][0]
    assert sdpa["fwd"]["backend"] in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")
    assert set(res["triton_candidates"]) == {"float32-d16", "float16-d16"}


def test_time_budget_skips_the_rest(tmp_path):
    cfg = dataclasses.replace(CPU_CONFIG, seq_lens=(16, 32), providers=("naive",), repeat=1, warmup=0,
                              max_seconds=0.0, out=str(tmp_path / "b.json"))  # fmt: skip
    rows = run(cfg, command="t", verbose=False)
    res = json.loads((tmp_path / "b.json").read_text())["results"]
    assert rows == [] and not res["complete"] and len(res["skipped"]) == 4


def test_summary_table():
    from lib.flash.bench import summary_table

    rows = [
        {"provider": "a", "dtype": "float16", "head_dim": 128, "causal": False, "seq": 4096, "fwd": {"tflops": 1.25}},
        {"provider": "b", "dtype": "float16", "head_dim": 128, "causal": False, "seq": 4096, "fwd": {"error": "x"}},
    ]
    lines = summary_table(rows)
    assert lines[0].split() == ["causal", "N", "mode", "a", "b"]
    assert lines[1].split() == ["False", "4096", "fwd", "1.25", "-"]


def test_gpu_report_reads_only_a_results_file(tmp_path):
    from lib.flash.bench import gpu_report
    from lib.utils import save_results

    assert "not measured yet" in gpu_report(tmp_path / "bench_cuda.json")[0]

    def row(provider, causal, seq, fwd, fwd_bwd):
        r = {"provider": provider, "dtype": "float16", "head_dim": 128, "causal": causal, "seq": seq}
        if fwd is not None:
            r["fwd"] = {"tflops": fwd}
        r["fwd_bwd"] = {"tflops": fwd_bwd}
        return r

    rows = [row("sdpa_flash", False, 4096, 400.0, 300.0), row("triton", False, 4096, 380.0, 180.0),
            row("triton_atomic", False, 4096, None, 198.0), row("sdpa_flash", True, 4096, 300.0, 200.0),
            row("triton", True, 4096, 200.0, 150.0)]  # fmt: skip
    rows[1]["fwd_bwd"]["launch"] = {"fwd": {"config": {"BLOCK_N": 64}, "source": "autotune"}, "bwd": {"config": {}}}
    path = save_results(tmp_path / "bench_cuda.json", {"rows": rows, "skipped": []}, command="test")
    text = "\n".join(gpu_report(path))
    assert "full fwd: triton / sdpa_flash N=4096: 0.95 (bar 0.9: met)" in text
    assert "full fwd_bwd: triton / sdpa_flash N=4096: 0.60 (bar 0.7: NOT met)" in text
    assert "causal fwd: triton / sdpa_flash N=4096: 0.67 (bar 0.9: NOT met)" in text
    assert "atomic-dQ / deterministic backward N=4096: 1.10" in text and "(autotune)" in text
