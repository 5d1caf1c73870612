"""Blockwise FlashAttention-2 (lib/flash/blockwise.py) against naive attention (lib/nn/attention.py), float64."""

import pytest
import torch

from lib.flash import attention_delta, flash_attention, flash_attention_forward, measure_peak_memory
from lib.nn.attention import scaled_dot_product_attention

CASES = [  # (batch, heads, N_q, N_k, d, causal, block_q, block_k)
    (1, 1, 1, 1, 8, True, 16, 16),
    (2, 3, 17, 17, 8, True, 16, 16),
    (2, 3, 17, 17, 8, False, 4, 8),
    (1, 2, 100, 257, 16, False, 32, 64),
    (1, 2, 257, 100, 16, False, 64, 32),
    (3, 1, 257, 257, 16, True, 64, 32),
    (1, 1, 100, 100, 4, True, 7, 13),
    (2, 2, 1, 17, 8, False, 16, 16),
]


def _inputs(B, H, N_q, N_k, d, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, N_q, d, generator=g, dtype=dtype)
    k = torch.randn(B, H, N_k, d, generator=g, dtype=dtype)
    v = torch.randn(B, H, N_k, d, generator=g, dtype=dtype)
    do = torch.randn(B, H, N_q, d, generator=g, dtype=dtype)
    return q, k, v, do


@pytest.mark.parametrize("B,H,N_q,N_k,d,causal,bq,bk", CASES)
def test_forward_and_gradients_match_naive(B, H, N_q, N_k, d, causal, bq, bk):
    q, k, v, do = _inputs(B, H, N_q, N_k, d, seed=N_q + N_k)
    outs, grads = [], []
    for fn in (
        lambda q, k, v: flash_attention(q, k, v, causal=causal, block_q=bq, block_k=bk),
        lambda q, k, v: scaled_dot_product_attention(q, k, v, is_causal=causal),
    ):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        o = fn(qq, kk, vv)
        outs.append(o)
        grads.append(torch.autograd.grad(o, (qq, kk, vv), do))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-12)
    for g_flash, g_ref in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(g_flash, g_ref, rtol=1e-10, atol=1e-12)


def test_lse_and_delta_identity():
    q, k, v, do = _inputs(2, 2, 33, 33, 8)
    fwd = flash_attention_forward(q, k, v, causal=True, block_q=8, block_k=16, scale=8**-0.5)
    logits = (q @ k.transpose(-2, -1)) * 8**-0.5
    logits = logits.masked_fill(torch.ones(33, 33, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(fwd.lse, torch.logsumexp(logits, -1))
    P = torch.softmax(logits, -1)
    dP = do @ v.transpose(-2, -1)
    # D = rowsum(dO * O) = rowsum(P * dP)
    torch.testing.assert_close(attention_delta(fwd.o, do), (P * dP).sum(-1))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_low_precision_inputs(dtype, tol):
    q, k, v, do = _inputs(1, 2, 45, 45, 16, dtype=dtype)
    qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
    o = flash_attention(qq, kk, vv, causal=True, block_q=16, block_k=16)
    assert o.dtype == dtype
    dq, dk, dv = torch.autograd.grad(o, (qq, kk, vv), do)
    assert dq.dtype == dk.dtype == dv.dtype == dtype
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    ref = scaled_dot_product_attention(q64, k64, v64, is_causal=True)
    torch.testing.assert_close(o.double(), ref, rtol=tol, atol=tol)
    for g, r in zip((dq, dk, dv), torch.autograd.grad(ref, (q64, k64, v64), do.double()), strict=True):
        torch.testing.assert_close(g.double(), r, rtol=4 * tol, atol=4 * tol)


def test_memory_is_linear_in_n():
    """Peak extra memory of the forward: blockwise ~ O(N d), naive ~ O(N^2) (measured, 2048 tokens)."""
    q, k, v, _ = _inputs(1, 1, 2048, 2048, 32, dtype=torch.float32)
    flash = measure_peak_memory(lambda: flash_attention(q, k, v, block_q=128, block_k=128), device="cpu")
    naive = measure_peak_memory(lambda: scaled_dot_product_attention(q, k, v), device="cpu")
    assert naive.peak_bytes >= 2 * 2048 * 2048 * 4 * 0.9  # logits and weights, FP32
    assert flash.peak_bytes * 8 < naive.peak_bytes


def test_bad_input():
    q = torch.zeros(1, 1, 4, 8)
    with pytest.raises(ValueError, match="q must have shape"):
        flash_attention(q[0], q, q)
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        flash_attention(q.int(), q.int(), q.int())
    with pytest.raises(TypeError, match="share one dtype"):
        flash_attention(q, q.double(), q)
    with pytest.raises(ValueError, match="causal=True needs"):
        flash_attention(q, torch.zeros(1, 1, 5, 8), torch.zeros(1, 1, 5, 8), causal=True)
    with pytest.raises(ValueError, match="head_dim"):
        flash_attention(q, torch.zeros(1, 1, 4, 4), q)
    with pytest.raises(ValueError, match="block_q"):
        flash_attention(q, q, q, block_q=0)
    with pytest.raises(ValueError, match="share \\(batch, heads\\)"):
        flash_attention(q, torch.zeros(2, 1, 4, 8), torch.zeros(2, 1, 4, 8))
    with pytest.raises(TypeError, match="causal must be a bool"):
        flash_attention(q, q, q, causal=1)


def test_saved_for_backward_is_o_and_lse_only():
    from lib.flash import saved_tensor_bytes

    N, d = 300, 16
    q, k, v = (torch.randn(2, 3, N, d, requires_grad=True) for _ in range(3))
    flash = saved_tensor_bytes(lambda q, k, v: flash_attention(q, k, v, causal=True, block_q=64, block_k=64), q, k, v)
    assert flash == 2 * 3 * (N * d + N) * 4  # O and the log-sum-exp, FP32
    naive = saved_tensor_bytes(lambda q, k, v: scaled_dot_product_attention(q, k, v), q, k, v)
    assert naive >= 2 * 3 * N * N * 4  # the attention matrix P
