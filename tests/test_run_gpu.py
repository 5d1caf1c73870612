"""tests/run_gpu.py (make gpu): the plan of steps, the environment check and the summary; the dry run itself is a
step of make test (tests/run_all.py)."""

import json

import torch

from tests import run_gpu


def test_cuda_test_files_follow_the_naming_contract():
    files = run_gpu.cuda_tests()
    assert "tests/flash/test_flash_triton_cuda.py" in files
    assert all(f.startswith("tests/") and f.endswith("_cuda.py") for f in files)


def test_plan_dry_writes_outside_results(tmp_path):
    steps = run_gpu.plan(True, 450.0, tmp_path)
    assert [s.name for s in steps][:3] == ["CUDA tests", "FlashAttention benchmark", "mixed-precision benchmark"]
    assert sum(s.limit for s in steps) <= 450.0
    for s in steps[1:]:
        assert s.out is not None and s.out.is_relative_to(tmp_path)
    assert "--dry" in steps[1].cmd and "--dry" in steps[2].cmd
    gpu = run_gpu.plan(False, 450.0, run_gpu.ROOT / "results")
    assert gpu[1].out == run_gpu.ROOT / "results" / "flash" / "bench_cuda.json"
    assert gpu[2].out == run_gpu.ROOT / "results" / "precision" / "bench_cuda.json"
    assert "--dry" not in gpu[1].cmd and "--max-seconds" in gpu[1].cmd


def test_environment_check():
    assert run_gpu.check_environment(dry=True) is None
    reason = run_gpu.check_environment(dry=False)
    assert (reason is None) == torch.cuda.is_available()
    if reason is not None:
        assert "DRY=1" in reason or "pip install" in reason or "cannot use it" in reason


def test_summary_lists_every_step(tmp_path):
    steps = run_gpu.plan(True, 100.0, tmp_path)
    (tmp_path / "flash").mkdir()
    rows = [{"provider": "naive", "dtype": "float32", "head_dim": 16, "causal": True, "seq": 40,
             "fwd": {"tflops": 0.5}, "fwd_bwd": {"error": "x"}}]  # fmt: skip
    steps[1].out.write_text(json.dumps({"provenance": {"device": "cpu"}, "results": {"rows": rows, "skipped": []}}))
    lines = run_gpu.summary(steps, 1.0)
    assert any(line.startswith("FlashAttention benchmark") and "1 rows (1 with errors)" in line for line in lines)
    assert any("0.5" in line for line in lines[-3:])
