"""FlashAttention-2 forward and backward as Triton kernels, with an autograd wrapper.

Dao (2023), "FlashAttention-2", algorithms 1 (forward) and 2 (backward); Tillet et al. (2019), Triton. The loop
structure is that of ``blockwise.py`` (read that first); here one *program* owns one query block (forward, dQ)
or one key block (dK, dV), and its tiles live in registers/shared memory. Chapter: "FlashAttention in three
layers".

On a machine without CUDA this module sets ``TRITON_INTERPRET=1`` *before* defining the kernels (Triton reads it
when ``@triton.jit`` runs), so the same kernels execute on CPU tensors through Triton's NumPy interpreter. The
interpreter's BF16 ``tl.dot`` is wrong, so on that path every dot is computed in FP32 (``DOT_FP32``).
The ``@triton.jit`` helpers of ``triton.language.standard`` (``tl.zeros``, ``tl.max``, ``tl.sum``) are compiled or
interpreted once, when ``triton`` is first imported; if something (``torch._dynamo``, say) imported it before
``TRITON_INTERPRET`` was set, an interpreted kernel cannot call them, so the reductions then call the builtin
``tl.reduce`` directly (``_STD_OK``), and the accumulators are made with ``tl.full`` rather than ``tl.zeros``.

Glossary
--------
BLOCK_M, BLOCK_N   query rows and key rows per tile (``block_q``, ``block_k`` of the text)
BLOCK_D            head_dim rounded up to a power of two (extra columns are masked to 0)
LSE                per-row log-sum-exp, stored in base 2 (``m + log2 l`` of the logits times ``log2 e``)
Delta              ``D = rowsum(dO * O)``, FP32
qk_scale           ``scale * log2(e)``: the kernels use ``exp2`` (one instruction) instead of ``exp``
"""

from __future__ import annotations

import math
import os

import torch

if not torch.cuda.is_available():  # CPU only: run the kernels through the interpreter (must precede @triton.jit)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.runtime.errors import OutOfResources  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
"""True when the kernels below were defined in interpreter mode (they then run on CPU tensors)."""

LOG2E = 1.4426950408889634
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 128


# Standard-library reductions (tl.max, tl.sum) are themselves @triton.jit functions, defined when triton is first
# imported: usable in our kernels unless triton was imported before TRITON_INTERPRET was set (then they are compiled
# JITFunctions that an interpreted kernel cannot call, and we call tl.reduce, a builtin, directly).
_STD_OK = not INTERPRET or type(tl.max).__name__ == "InterpretedFunction"

if _STD_OK:

    @triton.jit
    def _row_max(x):
        return tl.max(x, 1)

    @triton.jit
    def _row_sum(x):
        return tl.sum(x, 1)

else:
    # The interpreter recognises these combine functions by identity and reduces with NumPy (never calling them).
    _max_combine = tl.standard._elementwise_max
    _sum_combine = tl.standard._sum_combine

    @triton.jit
    def _row_max(x):
        return tl.reduce(x, 1, _max_combine)

    @triton.jit
    def _row_sum(x):
        return tl.reduce(x, 1, _sum_combine)


@triton.jit
def _dot(a, b, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """``a @ b`` with FP32 accumulation (inputs cast to FP32 on the interpreter path)."""
    if DOT_FP32:
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PRECISION)
    else:
        c = tl.dot(a, b, input_precision=PRECISION)
    return c


@triton.jit
def _load_rows(ptrs, row_mask, col_mask, EVEN_D: tl.constexpr):
    """Load a ``(rows, BLOCK_D)`` tile; masking the head-dim columns only when ``d`` is not a power of two keeps
    the mask constant along the contiguous axis, so the compiler can vectorise the load."""
    if EVEN_D:
        x = tl.load(ptrs, mask=row_mask[:, None], other=0.0)
    else:
        x = tl.load(ptrs, mask=row_mask[:, None] & col_mask[None, :], other=0.0)
    return x


@triton.jit
def _store_rows(ptrs, x, row_mask, col_mask, EVEN_D: tl.constexpr):
    if EVEN_D:
        tl.store(ptrs, x, mask=row_mask[:, None])
    else:
        tl.store(ptrs, x, mask=row_mask[:, None] & col_mask[None, :])


@triton.jit
def _fwd_inner(
    acc, l_i, m_i, q, K, V, stride_kn, stride_vn, offs_m, offs_n, offs_d, mask_d, N_K, qk_scale, lo, hi,
    MASK_CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Online-softmax update over the key blocks ``[lo, hi)`` (FA2 algorithm 1, inner loop)."""
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k = _load_rows(K + cols[:, None] * stride_kn + offs_d[None, :], cols < N_K, mask_d, EVEN_D)  # (BLOCK_N, D)
        v = _load_rows(V + cols[:, None] * stride_vn + offs_d[None, :], cols < N_K, mask_d, EVEN_D)
        s = _dot(q, tl.trans(k), DOT_FP32, PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), base-2 logits
        valid = cols[None, :] < N_K
        if MASK_CAUSAL:
            valid = valid & (cols[None, :] <= offs_m[:, None])
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, _row_max(s))  # finite: key 0 is visible to every row
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)  # rescale what was accumulated under the old maximum
        l_i = l_i * alpha + _row_sum(p)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT_FP32, PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
    H, N_Q, N_K, HEAD_DIM, qk_scale,
    CAUSAL: tl.constexpr, SPLIT_DIAGONAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """One program per (query block, batch * head): O_i and LSE_i, written once."""
    start_m = tl.program_id(0) * BLOCK_M
    off_bh = tl.program_id(1)
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)
    Q += off_b * stride_qb + off_h * stride_qh
    K += off_b * stride_kb + off_h * stride_kh
    V += off_b * stride_vb + off_h * stride_vh
    O += off_b * stride_ob + off_h * stride_oh
    LSE += off_bh.to(tl.int64) * N_Q

    offs_m = start_m + tl.arange(0, BLOCK_M)  # query rows of this program
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < N_Q
    mask_d = offs_d < HEAD_DIM
    q = _load_rows(Q + offs_m[:, None] * stride_qm + offs_d[None, :], mask_m, mask_d, EVEN_D)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max (base-2 logits)
    l_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)  # running normaliser
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, dtype=tl.float32)  # unnormalised output
    # fmt: off
    if CAUSAL:
        # key blocks after the last query of this block are skipped; with BLOCK_M % BLOCK_N == 0 the blocks left of
        # the diagonal need no mask, and only the diagonal blocks pay for it
        hi = tl.minimum(N_K, start_m + BLOCK_M)
        if SPLIT_DIAGONAL:
            acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, offs_m, offs_n, offs_d, mask_d,
                                       N_K, qk_scale, 0, start_m, False, BLOCK_N, EVEN_D, DOT_FP32, PRECISION)
            acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, offs_m, offs_n, offs_d, mask_d,
                                       N_K, qk_scale, start_m, hi, True, BLOCK_N, EVEN_D, DOT_FP32, PRECISION)
        else:
            acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, offs_m, offs_n, offs_d, mask_d,
                                       N_K, qk_scale, 0, hi, True, BLOCK_N, EVEN_D, DOT_FP32, PRECISION)
    else:
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, offs_m, offs_n, offs_d, mask_d,
                                   N_K, qk_scale, 0, N_K, False, BLOCK_N, EVEN_D, DOT_FP32, PRECISION)
    # fmt: on
    acc = acc / l_i[:, None]  # deferred normalisation
    tl.store(LSE + offs_m, m_i + tl.math.log2(l_i), mask=mask_m)
    o_ptrs = O + offs_m[:, None] * stride_om + offs_d[None, :]
    _store_rows(o_ptrs, acc.to(O.dtype.element_ty), mask_m, mask_d, EVEN_D)


@triton.jit
def _bwd_delta_kernel(O, DO, Delta, N_Q, HEAD_DIM, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """``Delta = rowsum(dO * O)`` for contiguous ``(B*H, N_Q, HEAD_DIM)`` tensors."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    off_bh = tl.program_id(1).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < N_Q) & (offs_d[None, :] < HEAD_DIM)
    ptrs = off_bh * N_Q * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    o = tl.load(O + ptrs, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Delta + off_bh * N_Q + offs_m, _row_sum(o * do), mask=offs_m < N_Q)


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, Delta,
    H, N_Q, N_K, HEAD_DIM, qk_scale, sm_scale,
    CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    EVEN_D: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """One program per key block: loop over query blocks, accumulate dK_j and dV_j (contiguous inputs)."""
    start_n = tl.program_id(0) * BLOCK_N
    off_bh = tl.program_id(1).to(tl.int64)
    Q += off_bh * N_Q * HEAD_DIM
    DO += off_bh * N_Q * HEAD_DIM
    K += off_bh * N_K * HEAD_DIM
    V += off_bh * N_K * HEAD_DIM
    DK += off_bh * N_K * HEAD_DIM
    DV += off_bh * N_K * HEAD_DIM
    LSE += off_bh * N_Q
    Delta += off_bh * N_Q

    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < N_K
    mask_d = offs_d < HEAD_DIM
    k = _load_rows(K + offs_n[:, None] * HEAD_DIM + offs_d[None, :], mask_n, mask_d, EVEN_D)  # (BLOCK_N, BLOCK_D)
    v = _load_rows(V + offs_n[:, None] * HEAD_DIM + offs_d[None, :], mask_n, mask_d, EVEN_D)
    dk = tl.full([BLOCK_N, BLOCK_D], 0.0, dtype=tl.float32)
    dv = tl.full([BLOCK_N, BLOCK_D], 0.0, dtype=tl.float32)
    lo = 0
    if CAUSAL:  # query blocks that end before this key block starts see none of it
        lo = (start_n // BLOCK_M) * BLOCK_M
    for start_m in range(lo, N_Q, BLOCK_M):
        offs_m = start_m + offs_m0
        mask_m = offs_m < N_Q
        q = _load_rows(Q + offs_m[:, None] * HEAD_DIM + offs_d[None, :], mask_m, mask_d, EVEN_D)  # (BLOCK_M, BLOCK_D)
        do = _load_rows(DO + offs_m[:, None] * HEAD_DIM + offs_d[None, :], mask_m, mask_d, EVEN_D)
        lse = tl.load(LSE + offs_m, mask=mask_m, other=0.0)
        delta = tl.load(Delta + offs_m, mask=mask_m, other=0.0)
        # transposed tile: rows are keys, columns are queries
        sT = _dot(k, tl.trans(q), DOT_FP32, PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
        valid = mask_n[:, None] & mask_m[None, :]
        if CAUSAL:
            valid = valid & (offs_n[:, None] <= offs_m[None, :])
        pT = tl.where(valid, tl.math.exp2(sT - lse[None, :]), 0.0)  # recomputed P^T
        dv += _dot(pT.to(do.dtype), do, DOT_FP32, PRECISION)  # dV = P^T dO
        dpT = _dot(v, tl.trans(do), DOT_FP32, PRECISION)  # dP^T = V dO^T
        dsT = pT * (dpT - delta[None, :])  # dS^T
        dk += _dot(dsT.to(q.dtype), q, DOT_FP32, PRECISION)  # dK = dS^T Q (times scale below)
    dk_ptrs = DK + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    _store_rows(dk_ptrs, (dk * sm_scale).to(DK.dtype.element_ty), mask_n, mask_d, EVEN_D)
    _store_rows(DV + offs_n[:, None] * HEAD_DIM + offs_d[None, :], dv.to(DV.dtype.element_ty), mask_n, mask_d, EVEN_D)


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, DQ, LSE, Delta,
    H, N_Q, N_K, HEAD_DIM, qk_scale, sm_scale,
    CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    EVEN_D: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """One program per query block: loop over key blocks, accumulate dQ_i (contiguous inputs)."""
    start_m = tl.program_id(0) * BLOCK_M
    off_bh = tl.program_id(1).to(tl.int64)
    Q += off_bh * N_Q * HEAD_DIM
    DO += off_bh * N_Q * HEAD_DIM
    DQ += off_bh * N_Q * HEAD_DIM
    K += off_bh * N_K * HEAD_DIM
    V += off_bh * N_K * HEAD_DIM
    LSE += off_bh * N_Q
    Delta += off_bh * N_Q

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < N_Q
    mask_d = offs_d < HEAD_DIM
    q = _load_rows(Q + offs_m[:, None] * HEAD_DIM + offs_d[None, :], mask_m, mask_d, EVEN_D)
    do = _load_rows(DO + offs_m[:, None] * HEAD_DIM + offs_d[None, :], mask_m, mask_d, EVEN_D)
    lse = tl.load(LSE + offs_m, mask=mask_m, other=0.0)
    delta = tl.load(Delta + offs_m, mask=mask_m, other=0.0)
    dq = tl.full([BLOCK_M, BLOCK_D], 0.0, dtype=tl.float32)
    hi = N_K
    if CAUSAL:
        hi = tl.minimum(N_K, start_m + BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        mask_n = offs_n < N_K
        k = _load_rows(K + offs_n[:, None] * HEAD_DIM + offs_d[None, :], mask_n, mask_d, EVEN_D)
        v = _load_rows(V + offs_n[:, None] * HEAD_DIM + offs_d[None, :], mask_n, mask_d, EVEN_D)
        s = _dot(q, tl.trans(k), DOT_FP32, PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        valid = mask_m[:, None] & mask_n[None, :]
        if CAUSAL:
            valid = valid & (offs_n[None, :] <= offs_m[:, None])
        p = tl.where(valid, tl.math.exp2(s - lse[:, None]), 0.0)
        dp = _dot(do, tl.trans(v), DOT_FP32, PRECISION)  # dP = dO V^T
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, DOT_FP32, PRECISION)  # dQ = dS K (times scale below)
    _store_rows(
        DQ + offs_m[:, None] * HEAD_DIM + offs_d[None, :],
        (dq * sm_scale).to(DQ.dtype.element_ty),
        mask_m,
        mask_d,
        EVEN_D,
    )


# ----------------------------------------------------------------------------------------------------------------
# Launch configuration and the autograd wrapper (plumbing)
# ----------------------------------------------------------------------------------------------------------------


def launch_config(head_dim: int, dtype: torch.dtype) -> dict[str, dict[str, int]]:
    """Tile sizes, warps and pipeline stages of the three kernels (GPU); the interpreter ignores warps/stages.

    The half-precision values follow the Triton fused-attention tutorial's choices for Hopper/Ampere;
    FP32 tiles are smaller (twice the bytes per element in shared memory and registers).
    """
    if dtype == torch.float32:
        fwd = dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2)
        dkdv = dict(BLOCK_M=32, BLOCK_N=64, num_warps=4, num_stages=2)
        dq = dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2)
    else:
        big = head_dim > 64
        fwd = dict(BLOCK_M=128, BLOCK_N=64, num_warps=8 if big else 4, num_stages=3 if big else 4)
        dkdv = dict(BLOCK_M=32, BLOCK_N=128, num_warps=8 if big else 4, num_stages=3 if big else 4)
        dq = dict(BLOCK_M=128, BLOCK_N=32, num_warps=8 if big else 4, num_stages=3 if big else 4)
    return {"fwd": fwd, "dkdv": dkdv, "dq": dq}


def _launch_kwargs(cfg: dict[str, int], block_m: int | None, block_n: int | None) -> dict[str, int]:
    out = dict(cfg)
    if block_m is not None:
        out["BLOCK_M"] = block_m
    if block_n is not None:
        out["BLOCK_N"] = block_n
    if INTERPRET:  # the interpreter takes no warps/stages
        out.pop("num_warps"), out.pop("num_stages")
    return out


def _launch(kernel, grid, args, kw) -> None:
    """Launch ``kernel[grid](*args, **kw)``; if the GPU lacks shared memory for ``num_stages`` pipeline stages,
    retry with fewer stages (same tiles, same grid) before giving up."""
    if "num_stages" not in kw:  # interpreter
        kernel[grid](*args, **kw)
        return
    tries = sorted({kw["num_stages"], min(2, kw["num_stages"]), 1}, reverse=True)
    for n in tries:
        try:
            kernel[grid](*args, **{**kw, "num_stages": n})
            return
        except OutOfResources:
            if n == tries[-1]:
                raise


def _check_inputs(q, k, v, causal, block_m, block_n) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not torch.is_tensor(t):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (batch, heads, seq, head_dim), got shape {tuple(t.shape)}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"{name} must be float16, bfloat16 or float32 for the Triton kernel, got {t.dtype} "
                "(use lib.flash.flash_attention for float64)"
            )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if not INTERPRET and q.device.type != "cuda":
        raise ValueError(
            f"q, k, v are on {q.device}: the Triton kernels run on CUDA, or on CPU only when TRITON_INTERPRET=1 "
            "was set before lib.flash.triton_kernels was first imported"
        )
    d = q.shape[3]
    if not (q.shape[:2] == k.shape[:2] == v.shape[:2]):
        raise ValueError(f"q, k, v must share (batch, heads), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape[3] != d or v.shape[3] != d:
        raise ValueError(f"q, k, v must share head_dim, got {d}, {k.shape[3]}, {v.shape[3]}")
    if not MIN_HEAD_DIM <= d <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be in [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}] for the Triton kernel, got {d}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v must share seq, got {k.shape[2]} and {v.shape[2]}")
    if q.shape[2] == 0 or k.shape[2] == 0:
        raise ValueError(f"seq must be >= 1, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if causal and q.shape[2] != k.shape[2]:
        raise ValueError(f"causal=True needs as many queries as keys, got seq {q.shape[2]} and {k.shape[2]}")
    for name, b in (("block_m", block_m), ("block_n", block_n)):
        if b is not None and (not isinstance(b, int) or isinstance(b, bool) or b < 16 or b & (b - 1)):
            raise ValueError(f"{name} must be None or a power of two >= 16, got {b!r}")


def _forward(q, k, v, causal, scale, block_m, block_n):
    B, H, N_q, d = q.shape
    N_k = k.shape[2]
    o = torch.empty_like(q)
    lse = torch.empty(B, H, N_q, dtype=torch.float32, device=q.device)  # base-2 log-sum-exp
    kw = _launch_kwargs(launch_config(d, q.dtype)["fwd"], block_m, block_n)
    BLOCK_D = max(16, triton.next_power_of_2(d))
    grid = (triton.cdiv(N_q, kw["BLOCK_M"]), B * H)
    args = (
        q, k, v, o, lse,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
        H, N_q, N_k, d, scale * LOG2E,
    )  # fmt: skip
    kw.update(CAUSAL=causal, SPLIT_DIAGONAL=kw["BLOCK_M"] % kw["BLOCK_N"] == 0, BLOCK_D=BLOCK_D, EVEN_D=BLOCK_D == d)
    kw.update(DOT_FP32=INTERPRET, PRECISION="ieee" if q.dtype == torch.float32 else "tf32")
    _launch(_fwd_kernel, grid, args, kw)
    return o, lse


def _backward(q, k, v, o, lse, do, causal, scale, block_m, block_n):
    B, H, N_q, d = q.shape
    N_k = k.shape[2]
    BLOCK_D = max(16, triton.next_power_of_2(d))
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    delta = torch.empty(B, H, N_q, dtype=torch.float32, device=q.device)
    _bwd_delta_kernel[(triton.cdiv(N_q, 64), B * H)](o, do, delta, N_q, d, BLOCK_M=64, BLOCK_D=BLOCK_D)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    cfg = launch_config(d, q.dtype)
    common = dict(CAUSAL=causal, BLOCK_D=BLOCK_D, EVEN_D=BLOCK_D == d, DOT_FP32=INTERPRET, PRECISION=precision)
    kw = _launch_kwargs(cfg["dkdv"], block_m, block_n)
    args = (q, k, v, do, dk, dv, lse, delta, H, N_q, N_k, d, scale * LOG2E, scale)
    _launch(_bwd_dkdv_kernel, (triton.cdiv(N_k, kw["BLOCK_N"]), B * H), args, {**common, **kw})
    kw = _launch_kwargs(cfg["dq"], block_m, block_n)
    args = (q, k, v, do, dq, lse, delta, H, N_q, N_k, d, scale * LOG2E, scale)
    _launch(_bwd_dq_kernel, (triton.cdiv(N_q, kw["BLOCK_M"]), B * H), args, {**common, **kw})
    return dq, dk, dv


class TritonFlashAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: saves q, k, v, O and the (base-2) log-sum-exp; the backward recomputes P."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, block_m, block_n):  # noqa: D102
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        o, lse = _forward(q, k, v, causal, scale, block_m, block_n)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.config = (causal, scale, block_m, block_n)
        return o

    @staticmethod
    def backward(ctx, do):  # noqa: D102
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, o, lse, do.contiguous(), *ctx.config)
        return dq, dk, dv, None, None, None, None


def triton_flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    *,
    scale: float | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Exact attention ``softmax(scale * q k^T) v`` by the Triton FlashAttention-2 kernels, differentiable.

    Args:
        q: queries ``(batch, heads, N_q, d)`` with ``16 <= d <= 128``; FP16, BF16 or FP32 (FP32 accumulation).
        k: keys ``(batch, heads, N_k, d)``.
        v: values ``(batch, heads, N_k, d)``.
        causal: query i attends to keys j <= i (needs ``N_q == N_k``).
        scale: logit scale, default ``1 / sqrt(d)``.
        block_m, block_n: override the query/key tile sizes of all kernels (powers of two >= 16); default
            :func:`launch_config`.

    Returns:
        ``(batch, heads, N_q, d)`` in the input dtype. On CUDA the kernels are compiled; on CPU they run under
        Triton's interpreter (``INTERPRET``), slowly: use small sizes there.
    """
    _check_inputs(q, k, v, causal, block_m, block_n)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    elif not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number or None, got {scale!r}")
    return TritonFlashAttentionFunction.apply(q, k, v, causal, float(scale), block_m, block_n)
