"""The compiled Triton FlashAttention kernels on a CUDA GPU (skipped without one; run by ``make gpu``).

Forward and backward in FP16 and BF16, d in {64, 128}, causal and not, ragged lengths (1000, 333), N = 1 and
non-contiguous inputs: O, dQ, dK, dV against FP32 naive autograd. A result passes when its error is at most 3 times
the error of naive attention computed in the same dtype (plus 1e-5, for cases where that error is exactly 0).
Every launch configuration the benchmark can use (each autotuning candidate, forced) is tested at a ragged length
and at a multiple of every tile (N = 1024: the ``EVEN_*`` kernels, the ones the benchmark's lengths compile), and so
are the autotuned path, the FA-2 atomic-dQ backward (both kinds of length) and the determinism of the default
backward.

Test ids carry the dtype (``fp16``/``bf16``), the head dim (``d64``/``d128``) and ``causal``: ``make gpu`` splits the
tests on them into parallel pytest processes (``CUDA_TEST_SHARDS`` in ``tests/run_gpu.py``) that compile disjoint
sets of kernels, each on its own CPU core. A new test here should carry these ids where it has these parameters.
"""

import dataclasses

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device (make gpu runs these)", allow_module_level=True)

from lib.flash import triton_kernels as tk  # noqa: E402
from lib.nn.attention import scaled_dot_product_attention  # noqa: E402

DTYPES = [torch.float16, torch.bfloat16]


def _inputs(B, H, N, d, dtype, seed=0, layout="bhnd"):
    g = torch.Generator(device="cuda").manual_seed(seed)
    if layout == "bnhd":  # (B, N, H, d) storage viewed as (B, H, N, d): strided, not contiguous
        return [torch.randn(B, N, H, d, generator=g, device="cuda", dtype=dtype).transpose(1, 2) for _ in range(4)]
    return [torch.randn(B, H, N, d, generator=g, device="cuda", dtype=dtype) for _ in range(4)]


def _grads(fn, q, k, v, do):
    qq, kk, vv = (t.detach().clone().requires_grad_() for t in (q, k, v))
    o = fn(qq, kk, vv)
    return (o, *torch.autograd.grad(o, (qq, kk, vv), do))


def _errors(fn, q, k, v, do, causal):
    """Max abs errors of (O, dQ, dK, dV) of ``fn`` and of naive attention in the same dtype, vs FP32 naive."""
    ref = _grads(
        lambda a, b, c: scaled_dot_product_attention(a, b, c, is_causal=causal), *(t.float() for t in (q, k, v, do))
    )
    low = _grads(lambda a, b, c: scaled_dot_product_attention(a, b, c, is_causal=causal), q, k, v, do)
    out = _grads(fn, q, k, v, do)
    for t, r in zip(out, ref, strict=True):
        assert t.dtype == q.dtype and t.shape == r.shape
    ours = [(t.float() - r).abs().max().item() for t, r in zip(out, ref, strict=True)]
    naive = [(t.float() - r).abs().max().item() for t, r in zip(low, ref, strict=True)]
    return ours, naive


def _assert_within_3x(ours, naive, what):
    for name, e, n in zip(("O", "dQ", "dK", "dV"), ours, naive, strict=True):
        assert e <= 3 * n + 1e-5, f"{what}: {name} error {e:.3g} > 3 x naive's {n:.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("d", [64, 128], ids=["d64", "d128"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("N", [1000, 333, 1, 1024])
def test_autotuned_matches_fp32(dtype, d, causal, N):
    q, k, v, do = _inputs(2, 3, N, d, dtype, seed=N + d)
    ours, naive = _errors(lambda a, b, c: tk.triton_flash_attention(a, b, c, causal=causal), q, k, v, do, causal)
    _assert_within_3x(ours, naive, f"{dtype} d={d} causal={causal} N={N}")
    assert tk.last_launch()["fwd"]["source"] == tk.last_launch()["bwd"]["source"] == "autotune"


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("d", [64, 128], ids=["d64", "d128"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("N", [1000, 1024])
def test_every_candidate_configuration(dtype, d, causal, N):
    """The benchmark runs whichever candidate the autotuner picks: each must be right on its own, with the ragged-tile
    masks (1000) and without them (1024, like every length of the benchmark)."""
    cands = tk.candidate_configs(d, dtype)
    q, k, v, do = _inputs(1, 2, N, d, dtype, seed=7)
    for fwd in cands["fwd"]:
        for bwd in cands["bwd"]:
            cfg = tk.LaunchConfig(fwd, bwd)
            ours, naive = _errors(
                lambda a, b, c, cfg=cfg: tk.triton_flash_attention(a, b, c, causal=causal, config=cfg),
                q,
                k,
                v,
                do,
                causal,
            )
            _assert_within_3x(ours, naive, f"{cfg}")
            launched = tk.last_launch()
            assert launched["fwd"]["source"] == launched["bwd"]["source"] == "explicit"
            assert launched["fwd"]["config"]["BLOCK_N"] == fwd.BLOCK_N
            assert launched["bwd"]["config"]["BLOCK_N1"] == bwd.BLOCK_N1
            assert 1 <= launched["fwd"]["config"]["num_stages"] <= fwd.num_stages
            assert 1 <= launched["bwd"]["config"]["num_stages"] <= bwd.num_stages


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("d", [128], ids=["d128"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_non_contiguous_inputs(dtype, d, causal):
    q, k, v, do = _inputs(2, 4, 333, d, dtype, seed=3, layout="bnhd")
    assert not q.is_contiguous()
    ours, naive = _errors(lambda a, b, c: tk.triton_flash_attention(a, b, c, causal=causal), q, k, v, do, causal)
    _assert_within_3x(ours, naive, "non-contiguous")


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
@pytest.mark.parametrize("d", [64, 128], ids=["d64", "d128"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("N", [1000, 1024])
def test_atomic_dq_backward(dtype, d, causal, N):
    q, k, v, do = _inputs(2, 2, N, d, dtype, seed=11)
    ours, naive = _errors(
        lambda a, b, c: tk.triton_flash_attention(a, b, c, causal=causal, atomic_dq=True), q, k, v, do, causal
    )
    _assert_within_3x(ours, naive, "atomic dQ")


@pytest.mark.parametrize("dtype", [torch.float16], ids=["fp16"])
@pytest.mark.parametrize("d", [64], ids=["d64"])
def test_default_backward_is_deterministic(dtype, d):
    q, k, v, do = _inputs(2, 4, 1000, d, dtype, seed=5)
    runs = [_grads(lambda a, b, c: tk.triton_flash_attention(a, b, c, causal=True), q, k, v, do) for _ in range(3)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert torch.equal(a, b)


def test_unequal_lengths_and_fp32():
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, 2, 100, 64, generator=g, device="cuda")
    k, v = (torch.randn(1, 2, 257, 64, generator=g, device="cuda") for _ in range(2))
    do = torch.randn_like(q)
    ours, naive = _errors(lambda a, b, c: tk.triton_flash_attention(a, b, c), q, k, v, do, False)
    assert max(ours) < 1e-4, ours


def test_shared_memory_pruning_keeps_a_candidate_on_this_gpu():
    limit = tk.shared_memory_limit()
    for dtype in DTYPES:
        for d in (64, 128):
            for kind, cands in tk.candidate_configs(d, dtype).items():
                kept = tk.prune_by_shared_memory(cands, d, 2, limit)
                assert kept and all(tk.shared_memory_bytes(c, d, 2) <= limit for c in kept), (kind, d)
                assert all(
                    dataclasses.replace(c, num_stages=1) in [dataclasses.replace(x, num_stages=1) for x in cands]
                    for c in kept
                )
