"""The scan benchmark (lib/ssm/bench.py) at a tiny length: rows, results file, lookup."""

import json

import pytest

from lib.ssm import bench


def test_cpu_bench_writes_rows(tmp_path):
    out = tmp_path / "b.json"
    assert bench.main(["--device", "cpu", "--L", "16", "--repeat", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]["rows"]
    assert {(r["impl"], r["mode"]) for r in rows} == {(i, m) for i in ("loop", "chunked", "logdepth", "reference")
                                                      for m in bench.MODES}  # fmt: skip
    assert bench.lookup(rows, "loop", "fwd") > 0
    with pytest.raises(KeyError):
        bench.lookup(rows, "triton", "fwd")


def test_cuda_rows_put_triton_first():
    rows = bench.default_rows("cuda")
    assert rows[0].impl == "triton" and {r.impl for r in rows} >= {"triton", "loop", "reference"}
