"""Triton FlashAttention-2 kernels (lib/flash/triton_kernels.py) vs naive attention, under TRITON_INTERPRET on CPU.

The interpreter is slow: sizes are small; tiles are 16-32 wide, or the GPU candidates (128 x 64, 128 x 128, ...)
where a test says so. On a CUDA machine the same tests run the compiled kernels; the GPU-only checks (FP16/BF16
errors against naive attention in the same dtype, timing-related paths) are in test_flash_triton_cuda.py.
"""

import pytest
import torch

from lib.nn.attention import scaled_dot_product_attention

tk = pytest.importorskip("lib.flash.triton_kernels")

CASES = [  # (batch, heads, N_q, N_k, d, causal, block_m, block_n)
    (1, 1, 1, 1, 16, True, 16, 16),
    (2, 3, 17, 17, 16, True, 16, 32),  # causal with BLOCK_M % BLOCK_N != 0: one masked loop
    (1, 2, 100, 37, 32, False, 32, 16),
    (1, 1, 257, 257, 16, True, 64, 32),
    (2, 1, 17, 100, 24, False, 16, 32),
]


def _inputs(B, H, N_q, N_k, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = ((B, H, N_q, d), (B, H, N_k, d), (B, H, N_k, d), (B, H, N_q, d))
    return [torch.randn(*s, generator=g).to(device=device, dtype=dtype) for s in shapes]


def _device():
    return "cpu" if tk.INTERPRET else "cuda"


def _check(B, H, N_q, N_k, d, causal, bm, bn, dtype, tol):
    q, k, v, do = _inputs(B, H, N_q, N_k, d, dtype, _device(), seed=N_q * 7 + N_k)
    qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
    o = tk.triton_flash_attention(qq, kk, vv, causal=causal, block_m=bm, block_n=bn)
    assert o.shape == q.shape and o.dtype == dtype
    grads = torch.autograd.grad(o, (qq, kk, vv), do)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = scaled_dot_product_attention(q32, k32, v32, is_causal=causal)
    ref_grads = torch.autograd.grad(ref, (q32, k32, v32), do.float())
    torch.testing.assert_close(o.float(), ref, rtol=tol, atol=tol)
    for name, g, r in zip("qkv", grads, ref_grads, strict=True):
        assert g.dtype == dtype, name
        torch.testing.assert_close(g.float(), r, rtol=4 * tol, atol=4 * tol, msg=lambda m, n=name: f"d{n}: {m}")


@pytest.mark.parametrize("B,H,N_q,N_k,d,causal,bm,bn", CASES)
def test_fp32_forward_and_gradients_match_naive(B, H, N_q, N_k, d, causal, bm, bn):
    _check(B, H, N_q, N_k, d, causal, bm, bn, torch.float32, 2e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_half_precision(dtype, tol):
    _check(1, 2, 33, 33, 16, True, 16, 16, dtype, tol)


def test_default_launch_config_runs():
    q, k, v, _ = _inputs(1, 1, 70, 70, 32, torch.float32, _device())
    o = tk.triton_flash_attention(q, k, v, causal=True)
    torch.testing.assert_close(o, scaled_dot_product_attention(q, k, v, is_causal=True), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_atomic_dq_matches_naive(causal):
    """FA-2's backward (dQ by FP32 atomics inside the dK/dV loop): ragged, unequal lengths, several key blocks."""
    N_k = 100 if not causal else 70
    q, k, v, do = _inputs(2, 2, 70, N_k, 24, torch.float32, _device(), seed=3)
    qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
    o = tk.triton_flash_attention(qq, kk, vv, causal=causal, block_m=16, block_n=32, atomic_dq=True)
    grads = torch.autograd.grad(o, (qq, kk, vv), do)
    q32, k32, v32 = (t.clone().requires_grad_() for t in (q, k, v))
    ref = torch.autograd.grad(scaled_dot_product_attention(q32, k32, v32, is_causal=causal), (q32, k32, v32), do)
    for g, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


def _every_candidate(d, dtype):
    """Pairs that together cover every forward and every backward candidate (the CUDA test runs all pairs)."""
    f, b = tk.candidate_configs(d, dtype)["fwd"], tk.candidate_configs(d, dtype)["bwd"]
    return [tk.LaunchConfig(f[min(i, len(f) - 1)], b[min(i, len(b) - 1)]) for i in range(max(len(f), len(b)))]


@pytest.mark.parametrize(
    "d,dtype,N,causal",
    [(64, torch.float16, 200, True), (128, torch.float16, 130, False), (128, torch.bfloat16, 256, True)],
)
def test_every_candidate_configuration_in_the_interpreter(d, dtype, N, causal):
    """The tiles the GPU benchmark can use (each autotuning candidate), ragged (200, 130) and even (256) lengths."""
    q, k, v, do = _inputs(1, 1, N, N, d, dtype, _device(), seed=d + N)
    q32, k32, v32 = (t.float().requires_grad_() for t in (q, k, v))
    ref = scaled_dot_product_attention(q32, k32, v32, is_causal=causal)
    ref_grads = torch.autograd.grad(ref, (q32, k32, v32), do.float())
    tol = 4e-3 if dtype == torch.float16 else 3e-2
    for cfg in _every_candidate(d, dtype):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        o = tk.triton_flash_attention(qq, kk, vv, causal=causal, config=cfg)
        grads = torch.autograd.grad(o, (qq, kk, vv), do)
        torch.testing.assert_close(o.float(), ref, rtol=tol, atol=tol)
        for g, r in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g.float(), r, rtol=4 * tol, atol=4 * tol)
        assert tk.last_launch()["fwd"]["config"]["BLOCK_N"] == cfg.fwd.BLOCK_N
        assert tk.last_launch()["bwd"]["config"]["BLOCK_M2"] == cfg.bwd.BLOCK_M2


def test_autotune_path_and_launch_report():
    """``config="autotune"`` goes through triton.autotune (timed on the CPU clock here) and reports its choice."""
    q, k, v, do = _inputs(1, 1, 65, 65, 128, torch.float16, _device(), seed=1)
    qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
    o = tk.triton_flash_attention(qq, kk, vv, causal=True, config="autotune", atomic_dq=True)
    grads = torch.autograd.grad(o, (qq, kk, vv), do)
    q32, k32, v32 = (t.float().requires_grad_() for t in (q, k, v))
    ref = scaled_dot_product_attention(q32, k32, v32, is_causal=True)
    ref_grads = torch.autograd.grad(ref, (q32, k32, v32), do.float())
    torch.testing.assert_close(o.float(), ref, rtol=4e-3, atol=4e-3)
    for g, r in zip(grads, ref_grads, strict=True):  # DQ_ACC is zeroed before each timed trial (reset_to_zero)
        torch.testing.assert_close(g.float(), r, rtol=2e-2, atol=2e-2)
    report = tk.last_launch()
    cands = tk.candidate_configs(128, torch.float16)
    assert report["fwd"]["source"] == report["bwd"]["source"] == "autotune"
    assert tk.FwdConfig(**report["fwd"]["config"]) in cands["fwd"]
    assert tk.BwdConfig(**report["bwd"]["config"]) in cands["bwd"]


def test_candidate_configs_follow_the_issue():
    """d <= 64: 128 x 64 tiles, 4 warps; d = 128: 128 x 128, 8 warps, 3 stages, plus a 128 x 64 candidate (4 warps,
    as the tutorial keeps 8 warps only for tiles of at least 128 x 128 on Hopper)."""
    for dtype in (torch.float16, torch.bfloat16):
        assert tk.candidate_configs(64, dtype)["fwd"] == (tk.FwdConfig(128, 64, 4, 3),)
        assert tk.candidate_configs(128, dtype)["fwd"] == (tk.FwdConfig(128, 128, 8, 3), tk.FwdConfig(128, 64, 4, 3))
        for d in (16, 64, 128):
            for c in tk.candidate_configs(d, dtype)["bwd"]:  # diagonal split needs aligned tiles
                assert c.BLOCK_N1 % c.BLOCK_M1 == 0 and c.BLOCK_M2 % c.BLOCK_N2 == 0
            for c in tk.candidate_configs(d, dtype)["fwd"]:
                assert c.num_warps == 4 or c.BLOCK_M * c.BLOCK_N >= 128 * 128
    assert tk.launch_config(64, torch.float32).fwd == tk.candidate_configs(64, torch.float32)["fwd"][0]


def test_shared_memory_estimate_and_pruning():
    fwd = tk.FwdConfig(128, 128, 8, 3)
    assert tk.shared_memory_bytes(fwd, 128, 2) == 2 * (128 * 128 + 3 * 2 * 128 * 128)
    assert tk.shared_memory_bytes(fwd, 100, 2) == tk.shared_memory_bytes(fwd, 128, 2)  # d padded to 128
    bwd = tk.BwdConfig(32, 128, 128, 32, 4, 5)
    assert tk.shared_memory_bytes(bwd, 64, 2) == 2 * max(2 * 128 * 64 + 5 * 2 * 32 * 64, 2 * 128 * 64 + 5 * 2 * 32 * 64)
    big = tk.prune_by_shared_memory([fwd, tk.FwdConfig(128, 64, 8, 3)], 128, 2, limit=227 * 1024)
    assert big == [fwd, tk.FwdConfig(128, 64, 8, 3)]  # both fit a Hopper SM
    small = tk.prune_by_shared_memory([fwd, tk.FwdConfig(128, 64, 8, 3)], 128, 2, limit=80 * 1024)
    assert small == [tk.FwdConfig(128, 64, 8, 1)]  # fewer stages where that fits; 128 x 128 never does
    assert tk.prune_by_shared_memory([fwd], 128, 2, limit=1) == [tk.FwdConfig(128, 128, 8, 1)]  # never empty


def test_even_and_ragged_lengths_agree():
    """EVEN_N (no bounds mask at all) and the ragged-tile path give the same rows on the common prefix."""
    q, k, v, _ = _inputs(1, 2, 64, 64, 32, torch.float32, _device(), seed=9)
    even = tk.triton_flash_attention(q, k, v, block_m=32, block_n=32)  # 64 % 32 == 0
    ragged = tk.triton_flash_attention(q, k, v, block_m=32, block_n=32 * 4)  # one ragged 128-wide tile
    torch.testing.assert_close(even, ragged, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(even, scaled_dot_product_attention(q, k, v), rtol=2e-5, atol=2e-5)


def test_non_contiguous_inputs():
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(1, 40, 2, 16, generator=g).to(_device()) for _ in range(3)]  # (B, N, H, d) storage
    q, k, v = (t.transpose(1, 2) for t in x)
    assert not q.is_contiguous()
    o = tk.triton_flash_attention(q, k, v, causal=True)
    torch.testing.assert_close(o, scaled_dot_product_attention(q, k, v, is_causal=True), rtol=2e-5, atol=2e-5)


def test_bad_input():
    dev = _device()
    q = torch.zeros(1, 1, 8, 16, device=dev)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        tk.triton_flash_attention(q.double(), q.double(), q.double())
    with pytest.raises(ValueError, match="head_dim must be in \\[16, 128\\]"):
        x = torch.zeros(1, 1, 8, 8, device=dev)
        tk.triton_flash_attention(x, x, x)
    with pytest.raises(ValueError, match="head_dim must be in"):
        x = torch.zeros(1, 1, 8, 256, device=dev)
        tk.triton_flash_attention(x, x, x)
    with pytest.raises(ValueError, match="causal=True needs"):
        k = torch.zeros(1, 1, 9, 16, device=dev)
        tk.triton_flash_attention(q, k, k, causal=True)
    with pytest.raises(ValueError, match="shape \\(batch, heads, seq, head_dim\\)"):
        tk.triton_flash_attention(q[0], q[0], q[0])
    with pytest.raises(ValueError, match="block_m"):
        tk.triton_flash_attention(q, q, q, block_m=24)
    with pytest.raises(ValueError, match="share head_dim"):
        tk.triton_flash_attention(q, q, torch.zeros(1, 1, 8, 32, device=dev))
    with pytest.raises(TypeError, match="atomic_dq"):
        tk.triton_flash_attention(q, q, q, atomic_dq=1)
    with pytest.raises(TypeError, match="config"):
        tk.triton_flash_attention(q, q, q, config="fast")
    with pytest.raises(ValueError, match="either config or block_m"):
        tk.triton_flash_attention(q, q, q, config="autotune", block_m=16)


def test_lazy_import_contract():
    import lib.flash

    assert lib.flash.triton_flash_attention is tk.triton_flash_attention


def test_matmul_counts_of_the_two_backwards():
    """The tutorial's one-launch backward: 4 (dK/dV phase) + 3 (dQ phase) = 7; FA-2's atomic dQ: 4 + 1 = 5."""
    assert tk._count_dots(tk._bwd_dkdv_inner) == (4, 1)
    assert tk._count_dots(tk._bwd_dq_inner) == (3, 0)
    assert tk._count_dots(tk._fwd_inner) == (2, 0)
    assert tk.matmuls_per_tile_pair(atomic_dq=False) == 7 and tk.matmuls_per_tile_pair(atomic_dq=True) == 5


def test_stage_retry_and_autotune_fallback(monkeypatch):
    """The GPU-only launch logic, with fake kernels that run out of shared memory above one stage (the interpreter
    never does): an explicit configuration is retried with fewer stages, the count that worked is remembered and
    reported; an autotuner that finds nothing falls back to the last candidate, launched explicitly."""
    from triton.runtime.errors import OutOfResources

    stages = []

    class Kernel:  # launches that need one stage to fit
        def __getitem__(self, grid):
            def launch(*args, num_warps, num_stages, **meta):
                stages.append(num_stages)
                if num_stages > 1:
                    raise OutOfResources(300_000, 232_448, "shared memory")

            return launch

    class Tuned:  # every candidate out of resources
        def __getitem__(self, grid):
            def launch(*args, **meta):
                raise OutOfResources(300_000, 232_448, "shared memory")

            return launch

    monkeypatch.setattr(tk, "INTERPRET", False)
    monkeypatch.setattr(tk, "_fwd", Kernel())
    monkeypatch.setattr(tk, "_fwd_tuned", Tuned())
    monkeypatch.setattr(tk, "_WORKING_STAGES", {})
    cfg = tk.FwdConfig(128, 128, 8, 3)
    tk._launch("fwd", None, (), {}, cfg, torch.float16, 128)
    assert stages == [3, 2, 1]
    report = tk.last_launch()["fwd"]
    assert report["source"] == "explicit" and report["requested_stages"] == 3
    assert report["config"] == {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 1}
    assert tk.working_stages() == {f"fwd:{cfg}:float16:d128": 1}
    stages.clear()
    tk._launch("fwd", None, (), {}, cfg, torch.float16, 128)  # remembered: straight to one stage
    assert stages == [1]
    stages.clear()
    tk._launch("fwd", None, (), {}, "autotune", torch.float16, 128)
    last = tk.candidate_configs(128, torch.float16)["fwd"][-1]
    assert stages == [last.num_stages - i for i in range(last.num_stages)]
    assert tk.last_launch()["fwd"]["config"]["BLOCK_N"] == last.BLOCK_N
    assert tk.last_launch()["fwd"]["source"] == "explicit"
