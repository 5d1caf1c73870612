"""tests/run_gpu.py (make gpu): the plan of steps, the environment check and the summary; the dry run itself is a
step of make test (tests/run_all.py)."""

import json
import time

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


def test_cuda_test_shards_partition_the_tests():
    """Every test id lands in exactly one shard of the parallel CUDA test step (the last shard is the complement)."""
    from _pytest.mark.expression import Expression

    exprs = [Expression.compile(k) for k in run_gpu.CUDA_TEST_SHARDS]
    ids = [
        "test_autotuned_matches_fp32[1000-full-d64-fp16]",
        "test_autotuned_matches_fp32[1024-causal-d128-bf16]",
        "test_atomic_dq_backward[1000-full-d128-fp16]",
        "test_non_contiguous_inputs[full-d128-fp16]",
        "test_default_backward_is_deterministic[d64-fp16]",
        "test_unequal_lengths_and_fp32",
        "test_scan_matches[257-1-64]",
    ]
    for test_id in ids:
        hits = [i for i, e in enumerate(exprs) if e.evaluate(lambda name, test_id=test_id, **kw: name in test_id)]
        assert len(hits) == 1, (test_id, hits)
    assert run_gpu.plan(True, 450.0, run_gpu.ROOT)[0].shards[-1][-1] == run_gpu.CUDA_TEST_SHARDS[-1]


def test_parallel_shards_status_and_time_limit():
    ok = run_gpu.Step("s", [], 10.0, shards=[[run_gpu.PY, "-c", "pass"], [run_gpu.PY, "-c", "raise SystemExit(5)"]])
    assert run_gpu._run_shards(ok, {}, 30.0, dry=False) == "ok"
    none = run_gpu.Step("s", [], 10.0, shards=[[run_gpu.PY, "-c", "raise SystemExit(5)"]])
    assert run_gpu._run_shards(none, {}, 30.0, dry=True) == "ok (all skipped)"
    assert run_gpu._run_shards(none, {}, 30.0, dry=False) == "FAILED (no test ran)"
    bad = run_gpu.Step("s", [], 10.0, shards=[[run_gpu.PY, "-c", "pass"], [run_gpu.PY, "-c", "raise SystemExit(1)"]])
    assert run_gpu._run_shards(bad, {}, 30.0, dry=False) == "FAILED (exit 1)"
    slow = run_gpu.Step(
        "s", [], 10.0, shards=[[run_gpu.PY, "-c", "pass"], [run_gpu.PY, "-c", "import time; time.sleep(60)"]]
    )
    t0 = time.monotonic()
    assert run_gpu._run_shards(slow, {}, 2.0, dry=False) == "TIME LIMIT (1 of 2 shards killed)"
    assert time.monotonic() - t0 < 20
