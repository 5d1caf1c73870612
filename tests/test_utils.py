import json
import time

import pytest
import torch

from lib.utils import Timing, benchmark, get_device, load_results, provenance, save_results, seed_everything


def test_seed_everything_reproduces_all_generators():
    import random

    import numpy as np

    g = seed_everything(123)
    a = (random.random(), np.random.rand(), torch.rand(3), torch.rand(2, generator=g))
    g = seed_everything(123)
    b = (random.random(), np.random.rand(), torch.rand(3), torch.rand(2, generator=g))
    assert a[0] == b[0] and a[1] == b[1]
    assert torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])
    seed_everything(124)
    assert not torch.equal(torch.rand(3), a[2])


def test_seed_everything_sets_threads():
    old = torch.get_num_threads()
    try:
        seed_everything(0, threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("bad", [-1, 1.5, "0", True])
def test_seed_everything_rejects_bad_seed(bad):
    with pytest.raises(ValueError, match="seed"):
        seed_everything(bad)


def test_seed_everything_rejects_bad_threads():
    with pytest.raises(ValueError, match="threads"):
        seed_everything(0, threads=0)


def test_get_device():
    assert get_device("cpu") == torch.device("cpu")
    assert get_device().type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="prefer"):
        get_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            get_device("cuda")


def test_benchmark_counts_calls_and_takes_median():
    calls = []
    t = benchmark(lambda: calls.append(1), warmup=2, repeat=5, device="cpu")
    assert len(calls) == 7 and len(t.times) == 5
    assert Timing((3.0, 1.0, 2.0)).median == 2.0
    with pytest.raises(ValueError, match="repeat"):
        benchmark(lambda: None, repeat=0)
    with pytest.raises(TypeError, match="callable"):
        benchmark(3)


def test_results_round_trip(tmp_path):
    path = save_results(tmp_path / "r" / "x.json", {"speedup": 1.5}, command="python -m x")
    payload = load_results(path)
    assert payload["results"] == {"speedup": 1.5}
    prov = payload["provenance"]
    assert prov["command"] == "python -m x" and prov["torch"] == torch.__version__
    assert {"date", "device", "python", "cpu_count"} <= set(prov)
    (tmp_path / "bad.json").write_text(json.dumps({"results": 1}))
    with pytest.raises(ValueError, match="provenance"):
        load_results(tmp_path / "bad.json")


def test_provenance_has_device():
    assert provenance("c")["device"] in ("cpu", "cuda")


def test_benchmark_inner_calls_back_to_back():
    calls = []
    t = benchmark(lambda: calls.append(1), warmup=1, repeat=3, device="cpu", inner=4)
    assert len(calls) == 1 + 3 * 4 and len(t.times) == 3
    slow = benchmark(lambda: time.sleep(0.002), warmup=0, repeat=2, device="cpu", inner=3)
    assert 0.002 <= slow.median < 0.05  # per call, not per sample of 3 calls
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="inner"):
            benchmark(lambda: None, inner=bad)


def test_provenance_records_git_commit(tmp_path):
    from lib.utils import git_commit

    commit = git_commit()
    if commit is not None:  # a git checkout: the 40-hex commit, maybe marked dirty
        assert len(commit.removesuffix("-dirty")) == 40 and provenance("c")["git_commit"] == commit
    assert git_commit(tmp_path) is None  # not a repository


def test_compare_interleaves_rounds():
    from lib.utils import compare

    order = []
    out = compare({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=1, repeat=3, device="cpu")
    assert order == ["a", "b"] + ["a", "b"] * 3  # warm-ups, then one call of each per round
    assert set(out) == {"a", "b"} and all(len(t.times) == 3 for t in out.values())
    with pytest.raises(TypeError, match="fns"):
        compare({})
    with pytest.raises(ValueError, match="repeat"):
        compare({"a": lambda: None}, repeat=0)


def test_saved_tensor_bytes_counts_storages_once_and_excludes():
    from lib.utils import saved_tensor_bytes

    w = torch.randn(5, 3, requires_grad=True)
    x = torch.randn(4, 5)
    out, n = saved_tensor_bytes(lambda a: (a @ w).tanh(), x)  # mm saves x and w, tanh saves its output
    assert out.shape == (4, 3)
    assert n == 4 * (4 * 5 + 4 * 3)  # x (for dL/dw; w itself is not needed: x has no grad) and tanh's output
    assert saved_tensor_bytes(lambda a: (a @ w).tanh(), x, exclude=[x, w])[1] == 4 * 4 * 3

    # everything saved is still alive while the output holds the graph (freed inner graphs: tests/flows)
    assert saved_tensor_bytes(lambda a: (a @ w).tanh(), x, alive_only=True)[1] == n
    with pytest.raises(TypeError, match="fn must be callable"):
        saved_tensor_bytes(3)


def test_spread_over_seeds():
    from lib.utils import spread

    s = spread([1.0, 2.0, 4.0])
    assert s["mean"] == pytest.approx(7 / 3) and s["std"] == pytest.approx(1.5275252316519468)
    assert (s["n"], s["min"], s["max"], s["values"]) == (3, 1.0, 4.0, [1.0, 2.0, 4.0])
    assert spread([0.5])["std"] == 0.0
    with pytest.raises(ValueError, match="empty"):
        spread([])
