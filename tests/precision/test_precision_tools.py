"""Running sums, the autocast table, the benchmark and the torchrun entry point (smoke sizes)."""

import json

import pytest
import torch

from lib.precision import float_info
from lib.precision.accumulate import running_sum, stall_value
from lib.precision.amp import autocast_table
from lib.precision.bench import main as bench_main
from lib.precision.bench import matmul_precision, time_matmul, time_train_step


@pytest.mark.parametrize("dx", [0.01, 0.003, 0.1])
def test_fp16_running_sum_stalls_where_predicted(dx):
    n = int(1.5 * stall_value(dx) / dx) + 10
    s = running_sum(torch.full((n,), dx), torch.float16)
    assert s[-1].item() == stall_value(dx)
    assert s[-1].item() == s[-2].item()  # stalled: adding dx changes nothing


def test_kahan_follows_exact_sum():
    x = torch.full((3000,), 0.01)
    exact = 3000 * float(x.half()[0])
    kahan = running_sum(x, torch.float16, kahan=True)[-1].item()
    assert abs(kahan - exact) <= float_info(torch.float16).eps * exact  # within one FP16 rounding
    assert abs(running_sum(x, torch.float16)[-1].item() - exact) > 1.0  # the plain sum is far off
    with pytest.raises(ValueError, match="1-D"):
        running_sum(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="dx"):
        stall_value(0.0)


def test_autocast_table():
    for dtype in (torch.bfloat16, torch.float16):
        t = autocast_table(dtype, "cpu")
        assert t["matmul"] == t["linear"] == "lower"
        assert t["cross_entropy"] == "fp32" and t["add"] == "as input"
    with pytest.raises(ValueError, match="dtype"):
        autocast_table(torch.float32)
    with pytest.raises(ValueError, match="device_type"):
        autocast_table(torch.bfloat16, "tpu")


def test_bench_smoke(tmp_path):
    out = bench_main(
        ["--device", "cpu", "--sizes", "16", "--widths", "8", "--repeat", "1", "--out", str(tmp_path / "b.json")]
    )
    payload = json.loads(out.read_text())
    assert payload["provenance"]["device"] == "cpu" and "torch" in payload["provenance"]
    rows = payload["results"]["matmul"]
    assert [r["precision"] for r in rows] == ["fp32", "tf32", "fp16", "bf16"] and rows[0]["speedup"] == 1.0
    assert len(payload["results"]["train_step"]) == 4 and all(r["seconds"] > 0 for r in rows)
    with pytest.raises(ValueError, match="precision"):
        time_matmul(8, "fp8", torch.device("cpu"))
    with pytest.raises(ValueError, match="width"):
        time_train_step(0, "fp32", torch.device("cpu"))
    before = torch.get_float32_matmul_precision()
    with matmul_precision("tf32"):
        assert torch.get_float32_matmul_precision() == "high"
    assert torch.get_float32_matmul_precision() == before


def test_ddp_entry_point_single_process(monkeypatch, capsys):
    from lib.precision.ddp import free_port, main

    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(k, v)
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        main(["--steps", "3", "--amp", "bf16"])
    finally:  # main seeds and fixes threads for the whole process: restore them for other tests
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=warn_only)
    assert "world_size=1 amp=bf16 final loss=" in capsys.readouterr().out
