"""Triton FlashAttention-2 kernels (lib/flash/triton_kernels.py) vs naive attention, under TRITON_INTERPRET on CPU.

The interpreter is slow: sizes and head dims are small, tiles 16-32 wide. On a CUDA machine the same tests run
the compiled kernels.
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


def test_launch_config_shapes():
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for d in (16, 64, 128):
            cfg = tk.launch_config(d, dtype)
            assert set(cfg) == {"fwd", "dkdv", "dq"}
            for c in cfg.values():
                assert c["BLOCK_M"] >= 16 and c["BLOCK_N"] >= 16


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


def test_lazy_import_contract():
    import lib.flash

    assert lib.flash.triton_flash_attention is tk.triton_flash_attention
