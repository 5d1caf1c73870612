"""FlashAttention-2 forward and backward as Triton kernels, with an autograd wrapper.

Dao (2023), "FlashAttention-2", algorithms 1 (forward) and 2 (backward); Tillet et al. (2019), Triton; the
structure of the Triton fused-attention tutorial (``python/tutorials/06-fused-attention.py`` of the Triton
repository). The loop structure is that of ``blockwise.py`` (read that first); here one *program* owns one query
block (forward, dQ) or one key block (dK, dV), and its tiles live in registers/shared memory. Chapter:
"FlashAttention in three layers".

What is taken from the tutorial, and what is not:

* forward: one program per (query block, batch * head); the softmax scale is folded into ``exp2``; the causal
  loop is split into key blocks left of the diagonal (no mask) and diagonal blocks (masked); the accumulator is
  updated in place by ``tl.dot(p, v, acc)``. Unlike the tutorial we accept any sequence length and any head dim
  from 16 to 128: only the ragged last key tile is masked (the ``EVEN_N`` constexpr), and ``d`` is padded to a
  power of two with masked columns (``EVEN_D``).
* backward: as in the tutorial, a preprocessing kernel for ``Delta`` and then **one** launch in which program
  ``j`` first accumulates dK_j, dV_j over the query blocks (``BLOCK_M1 x BLOCK_N1`` tiles) and then dQ_j over the
  key blocks (``BLOCK_M2 x BLOCK_N2`` tiles): no atomics, deterministic, 7 matmuls per tile pair (S and dP are
  computed twice). Causal masking is split into off-diagonal (unmasked) and diagonal (masked) blocks.
  ``atomic_dq=True`` selects the FlashAttention-2 paper's variant instead: dQ is accumulated inside the dK/dV
  loop with FP32 atomic additions (5 matmuls per tile pair, summation order not deterministic).
* launch configurations: a short list per (dtype, head dim) (:func:`candidate_configs`), chosen by a small
  ``triton.autotune`` on CUDA after pruning by shared memory (:func:`prune_by_shared_memory`). On the
  interpreter the first candidate runs (or any explicit :class:`LaunchConfig`).

On a machine without CUDA this module sets ``TRITON_INTERPRET=1`` *before* defining the kernels (Triton reads it
when ``@triton.jit`` runs), so the same kernels execute on CPU tensors through Triton's NumPy interpreter. The
interpreter's BF16 ``tl.dot`` is wrong, so on that path every dot is computed in FP32 (``DOT_FP32``).
The ``@triton.jit`` helpers of ``triton.language.standard`` (``tl.zeros``, ``tl.max``, ``tl.sum``) are compiled or
interpreted once, when ``triton`` is first imported; if something (``torch._dynamo``, say) imported it before
``TRITON_INTERPRET`` was set, an interpreted kernel cannot call them, so the reductions then call the builtin
``tl.reduce`` directly (``_STD_OK``), and the accumulators are made with ``tl.full`` rather than ``tl.zeros``.

Glossary
--------
BLOCK_M, BLOCK_N   forward: query rows and key rows per tile (``block_q``, ``block_k`` of the text)
BLOCK_M1, BLOCK_N1 backward, dK/dV phase: query rows per step, key rows owned by the program
BLOCK_M2, BLOCK_N2 backward, dQ phase: query rows owned by the program, key rows per step
BLOCK_D            head_dim rounded up to a power of two (extra columns are masked to 0)
EVEN_N, EVEN_M1    constexpr: the sequence length is a multiple of the tile, so no tile needs a bounds mask
LSE                per-row log-sum-exp, stored in base 2 (``m + log2 l`` of the logits times ``log2 e``)
Delta              ``D = rowsum(dO * O)``, FP32
qk_scale           ``scale * log2(e)``: the kernels use ``exp2`` (one instruction) instead of ``exp``
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from typing import Any

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
def _dot_acc(a, b, acc, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """``acc + a @ b``, accumulated in place by the matrix unit (``tl.dot(a, b, acc)``)."""
    if DOT_FP32:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=PRECISION)
    else:
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _load_tile(ptrs, rows, n_rows, col_mask, MASK_ROWS: tl.constexpr, EVEN_D: tl.constexpr):
    """Load a ``(rows, BLOCK_D)`` tile. Rows are bounds-checked only for a ragged tile (``MASK_ROWS``); head-dim
    columns only when ``d`` is not a power of two, so a full tile is one unmasked, vectorisable load."""
    if MASK_ROWS:
        if EVEN_D:
            x = tl.load(ptrs, mask=(rows < n_rows)[:, None], other=0.0)
        else:
            x = tl.load(ptrs, mask=(rows < n_rows)[:, None] & col_mask[None, :], other=0.0)
    else:
        if EVEN_D:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=col_mask[None, :], other=0.0)
    return x


@triton.jit
def _store_rows(ptrs, x, row_mask, col_mask, EVEN_D: tl.constexpr):
    if EVEN_D:
        tl.store(ptrs, x, mask=row_mask[:, None])
    else:
        tl.store(ptrs, x, mask=row_mask[:, None] & col_mask[None, :])


# ----------------------------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _fwd_inner(
    acc, l_i, m_i, q, K, V, stride_kn, stride_vn, offs_m, offs_n, offs_d, mask_d, N_K, qk_scale, lo, hi,
    MASK_CAUSAL: tl.constexpr, MASK_N: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Online-softmax update over the key blocks ``[lo, hi)`` (FA2 algorithm 1, inner loop). ``MASK_N``: the
    range holds the ragged last key tile; ``MASK_CAUSAL``: the range holds diagonal tiles."""
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k = _load_tile(K + cols[:, None] * stride_kn + offs_d[None, :], cols, N_K, mask_d, MASK_N, EVEN_D)
        v = _load_tile(V + cols[:, None] * stride_vn + offs_d[None, :], cols, N_K, mask_d, MASK_N, EVEN_D)
        s = _dot(q, tl.trans(k), DOT_FP32, PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), base-2 logits
        if MASK_N:
            s = tl.where(cols[None, :] < N_K, s, float("-inf"))
        if MASK_CAUSAL:
            s = tl.where(cols[None, :] <= offs_m[:, None], s, float("-inf"))
        m_new = tl.maximum(m_i, _row_max(s))  # finite: the first visited tile holds a visible key for every row
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)  # rescale what was accumulated under the old maximum
        l_i = l_i * alpha + _row_sum(p)
        acc = acc * alpha[:, None]
        acc = _dot_acc(p.to(v.dtype), v, acc, DOT_FP32, PRECISION)  # acc += P~ V, in place
        m_i = m_new
    return acc, l_i, m_i


# H, N_Q, N_K are not specialised (Triton would compile a separate kernel for a value of 1 or a multiple of 16): one
# compiled kernel per (dtype, d, causal, tiles, EVEN_*) serves every length and head count, so the kernels the CUDA
# tests compile (3 heads) are the ones the benchmark loads from Triton's cache (16 or 32 heads) instead of
# compiling them again. Nothing is lost: H only indexes, and the lengths only bound loops and masks.
@triton.jit(do_not_specialize=["H", "N_Q", "N_K"])
def _fwd_kernel(
    Q, K, V, O, LSE,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
    H, N_Q, N_K, HEAD_DIM, qk_scale,
    CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    EVEN_D: tl.constexpr, EVEN_N: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
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
    q = _load_tile(Q + offs_m[:, None] * stride_qm + offs_d[None, :], offs_m, N_Q, mask_d, True, EVEN_D)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max (base-2 logits)
    l_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)  # running normaliser
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, dtype=tl.float32)  # unnormalised output
    # fmt: off
    if CAUSAL:
        # key blocks after the last query of this block are skipped; those entirely left of the first query need
        # no mask; only the diagonal blocks [diag_lo, hi) pay for the comparison (and hold the ragged tile, if any)
        diag_lo = (start_m // BLOCK_N) * BLOCK_N
        hi = tl.minimum(N_K, start_m + BLOCK_M)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, offs_m, offs_n, offs_d, mask_d,
                                   N_K, qk_scale, 0, diag_lo, False, False, BLOCK_N, EVEN_D, DOT_FP32, PRECISION)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, offs_m, offs_n, offs_d, mask_d,
                                   N_K, qk_scale, diag_lo, hi, True, not EVEN_N, BLOCK_N, EVEN_D, DOT_FP32, PRECISION)
    else:
        n_full = (N_K // BLOCK_N) * BLOCK_N  # full key tiles: no mask at all
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, offs_m, offs_n, offs_d, mask_d,
                                   N_K, qk_scale, 0, n_full, False, False, BLOCK_N, EVEN_D, DOT_FP32, PRECISION)
        if not EVEN_N:  # the ragged last key tile
            acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, offs_m, offs_n, offs_d,
                                       mask_d, N_K, qk_scale, n_full, N_K, False, True, BLOCK_N, EVEN_D, DOT_FP32,
                                       PRECISION)
    # fmt: on
    acc = acc / l_i[:, None]  # deferred normalisation
    tl.store(LSE + offs_m, m_i + tl.math.log2(l_i), mask=mask_m)
    o_ptrs = O + offs_m[:, None] * stride_om + offs_d[None, :]
    _store_rows(o_ptrs, acc.to(O.dtype.element_ty), mask_m, mask_d, EVEN_D)


# ----------------------------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------------------------


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
def _bwd_dkdv_inner(
    dk, dv, k, v, Q, DO, LSE, Delta, DQ_ACC, offs_n, mask_n, offs_d, mask_d, N_Q, HEAD_DIM, qk_scale, lo, hi,
    MASK_CAUSAL: tl.constexpr, MASK_M: tl.constexpr, ATOMIC_DQ: tl.constexpr, BLOCK_M1: tl.constexpr,
    EVEN_D: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """dK_j, dV_j over the query blocks ``[lo, hi)``, in transposed tiles (rows are keys, columns queries).
    Matmuls per tile: S^T, dV, dP^T, dK (4), plus dQ with ``ATOMIC_DQ`` (5)."""
    offs_m0 = tl.arange(0, BLOCK_M1)
    for start_m in range(lo, hi, BLOCK_M1):
        offs_m = start_m + offs_m0
        q = _load_tile(Q + offs_m[:, None] * HEAD_DIM + offs_d[None, :], offs_m, N_Q, mask_d, MASK_M, EVEN_D)
        do = _load_tile(DO + offs_m[:, None] * HEAD_DIM + offs_d[None, :], offs_m, N_Q, mask_d, MASK_M, EVEN_D)
        if MASK_M:
            lse = tl.load(LSE + offs_m, mask=offs_m < N_Q, other=0.0)
            delta = tl.load(Delta + offs_m, mask=offs_m < N_Q, other=0.0)
        else:
            lse = tl.load(LSE + offs_m)
            delta = tl.load(Delta + offs_m)
        sT = _dot(k, tl.trans(q), DOT_FP32, PRECISION) * qk_scale  # (BLOCK_N1, BLOCK_M1), S^T recomputed
        pT = tl.math.exp2(sT - lse[None, :])  # P^T, exactly normalised by the saved log-sum-exp
        if MASK_CAUSAL:
            pT = tl.where(offs_n[:, None] <= offs_m[None, :], pT, 0.0)
        if MASK_M:
            pT = tl.where((offs_m < N_Q)[None, :], pT, 0.0)
        if ATOMIC_DQ:  # padded keys of a ragged key block must not reach dQ
            pT = tl.where(mask_n[:, None], pT, 0.0)
        dv = _dot_acc(pT.to(do.dtype), do, dv, DOT_FP32, PRECISION)  # dV += P^T dO
        dpT = _dot(v, tl.trans(do), DOT_FP32, PRECISION)  # dP^T = V dO^T
        dsT = pT * (dpT - delta[None, :])  # dS^T
        dk = _dot_acc(dsT.to(q.dtype), q, dk, DOT_FP32, PRECISION)  # dK += dS^T Q (times scale at the end)
        if ATOMIC_DQ:  # FA-2: dQ_i += dS K_j, summed over key blocks by FP32 atomics (order not deterministic)
            dq = _dot(tl.trans(dsT.to(k.dtype)), k, DOT_FP32, PRECISION)  # (BLOCK_M1, BLOCK_D)
            dq_ptrs = DQ_ACC + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
            # relaxed: no ordering between programs is needed inside the launch (the sum is read after it ends), and
            # the default acq_rel semantics would fence every addition
            tl.atomic_add(dq_ptrs, dq, mask=(offs_m < N_Q)[:, None] & mask_d[None, :], sem="relaxed")
    return dk, dv


@triton.jit
def _bwd_dq_inner(
    dq, q, do, lse, delta, K, V, offs_m, offs_d, mask_d, N_K, HEAD_DIM, qk_scale, lo, hi,
    MASK_CAUSAL: tl.constexpr, MASK_N: tl.constexpr, BLOCK_N2: tl.constexpr, EVEN_D: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """dQ_i over the key blocks ``[lo, hi)``. Matmuls per tile: S, dP, dQ (3; with the 4 above, 7 in all)."""
    offs_n0 = tl.arange(0, BLOCK_N2)
    for start_n in range(lo, hi, BLOCK_N2):
        offs_n = start_n + offs_n0
        k = _load_tile(K + offs_n[:, None] * HEAD_DIM + offs_d[None, :], offs_n, N_K, mask_d, MASK_N, EVEN_D)
        v = _load_tile(V + offs_n[:, None] * HEAD_DIM + offs_d[None, :], offs_n, N_K, mask_d, MASK_N, EVEN_D)
        s = _dot(q, tl.trans(k), DOT_FP32, PRECISION) * qk_scale  # (BLOCK_M2, BLOCK_N2), S recomputed again
        p = tl.math.exp2(s - lse[:, None])
        if MASK_CAUSAL:
            p = tl.where(offs_n[None, :] <= offs_m[:, None], p, 0.0)
        if MASK_N:
            p = tl.where(offs_n[None, :] < N_K, p, 0.0)
        dp = _dot(do, tl.trans(v), DOT_FP32, PRECISION)  # dP = dO V^T, recomputed too
        ds = p * (dp - delta[:, None])
        dq = _dot_acc(ds.to(k.dtype), k, dq, DOT_FP32, PRECISION)  # dQ += dS K (times scale at the end)
    return dq


@triton.jit(do_not_specialize=["H", "N_Q", "N_K"])
def _bwd_kernel(
    Q, K, V, DO, DQ, DK, DV, DQ_ACC, LSE, Delta,
    H, N_Q, N_K, HEAD_DIM, qk_scale, sm_scale,
    CAUSAL: tl.constexpr, ATOMIC_DQ: tl.constexpr,
    BLOCK_M1: tl.constexpr, BLOCK_N1: tl.constexpr, BLOCK_M2: tl.constexpr, BLOCK_N2: tl.constexpr,
    BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, EVEN_M1: tl.constexpr, EVEN_N2: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """One launch, program j: dK_j, dV_j of key block j, then (unless ``ATOMIC_DQ``) dQ_j of query block j.
    Inputs contiguous ``(B*H, N, HEAD_DIM)``; dK, dV, dQ are each written once, without atomics."""
    pid = tl.program_id(0)
    off_bh = tl.program_id(1).to(tl.int64)
    Q += off_bh * N_Q * HEAD_DIM
    DO += off_bh * N_Q * HEAD_DIM
    DQ += off_bh * N_Q * HEAD_DIM
    DQ_ACC += off_bh * N_Q * HEAD_DIM
    K += off_bh * N_K * HEAD_DIM
    V += off_bh * N_K * HEAD_DIM
    DK += off_bh * N_K * HEAD_DIM
    DV += off_bh * N_K * HEAD_DIM
    LSE += off_bh * N_Q
    Delta += off_bh * N_Q
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM

    # ---- phase 1: dK_j, dV_j (key block j resident, stream the query blocks) ----
    start_n = pid * BLOCK_N1
    if start_n < N_K:
        offs_n = start_n + tl.arange(0, BLOCK_N1)
        mask_n = offs_n < N_K
        k = _load_tile(K + offs_n[:, None] * HEAD_DIM + offs_d[None, :], offs_n, N_K, mask_d, True, EVEN_D)
        v = _load_tile(V + offs_n[:, None] * HEAD_DIM + offs_d[None, :], offs_n, N_K, mask_d, True, EVEN_D)
        dk = tl.full([BLOCK_N1, BLOCK_D], 0.0, dtype=tl.float32)
        dv = tl.full([BLOCK_N1, BLOCK_D], 0.0, dtype=tl.float32)
        m_full = (N_Q // BLOCK_M1) * BLOCK_M1  # query tiles below m_full need no bounds mask
        # fmt: off
        if CAUSAL:
            # query blocks ending before this key block starts see none of it (skipped); those starting before it
            # ends straddle the diagonal (masked); the rest see all of it (unmasked)
            lo = (start_n // BLOCK_M1) * BLOCK_M1
            diag_hi = ((start_n + BLOCK_N1 + BLOCK_M1 - 1) // BLOCK_M1) * BLOCK_M1  # (no tl.cdiv: see _STD_OK)
            dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE, Delta, DQ_ACC, offs_n, mask_n, offs_d, mask_d, N_Q,
                                     HEAD_DIM, qk_scale, lo, tl.minimum(diag_hi, N_Q), True, True, ATOMIC_DQ,
                                     BLOCK_M1, EVEN_D, DOT_FP32, PRECISION)
            dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE, Delta, DQ_ACC, offs_n, mask_n, offs_d, mask_d, N_Q,
                                     HEAD_DIM, qk_scale, diag_hi, m_full, False, False, ATOMIC_DQ,
                                     BLOCK_M1, EVEN_D, DOT_FP32, PRECISION)
            if not EVEN_M1:
                dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE, Delta, DQ_ACC, offs_n, mask_n, offs_d, mask_d,
                                         N_Q, HEAD_DIM, qk_scale, tl.maximum(m_full, diag_hi), N_Q, False, True,
                                         ATOMIC_DQ, BLOCK_M1, EVEN_D, DOT_FP32, PRECISION)
        else:
            dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE, Delta, DQ_ACC, offs_n, mask_n, offs_d, mask_d, N_Q,
                                     HEAD_DIM, qk_scale, 0, m_full, False, False, ATOMIC_DQ,
                                     BLOCK_M1, EVEN_D, DOT_FP32, PRECISION)
            if not EVEN_M1:
                dk, dv = _bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE, Delta, DQ_ACC, offs_n, mask_n, offs_d, mask_d,
                                         N_Q, HEAD_DIM, qk_scale, m_full, N_Q, False, True, ATOMIC_DQ,
                                         BLOCK_M1, EVEN_D, DOT_FP32, PRECISION)
        # fmt: on
        kv_ptrs = offs_n[:, None] * HEAD_DIM + offs_d[None, :]
        _store_rows(DK + kv_ptrs, (dk * sm_scale).to(DK.dtype.element_ty), mask_n, mask_d, EVEN_D)
        _store_rows(DV + kv_ptrs, dv.to(DV.dtype.element_ty), mask_n, mask_d, EVEN_D)

    # ---- phase 2: dQ_j (query block j resident, stream the key blocks) ----
    if not ATOMIC_DQ:
        start_m = pid * BLOCK_M2
        if start_m < N_Q:
            offs_m = start_m + tl.arange(0, BLOCK_M2)
            mask_m = offs_m < N_Q
            q = _load_tile(Q + offs_m[:, None] * HEAD_DIM + offs_d[None, :], offs_m, N_Q, mask_d, True, EVEN_D)
            do = _load_tile(DO + offs_m[:, None] * HEAD_DIM + offs_d[None, :], offs_m, N_Q, mask_d, True, EVEN_D)
            lse = tl.load(LSE + offs_m, mask=mask_m, other=0.0)
            delta = tl.load(Delta + offs_m, mask=mask_m, other=0.0)
            dq = tl.full([BLOCK_M2, BLOCK_D], 0.0, dtype=tl.float32)
            # fmt: off
            if CAUSAL:
                diag_lo = (start_m // BLOCK_N2) * BLOCK_N2
                dq = _bwd_dq_inner(dq, q, do, lse, delta, K, V, offs_m, offs_d, mask_d, N_K, HEAD_DIM, qk_scale,
                                   0, diag_lo, False, False, BLOCK_N2, EVEN_D, DOT_FP32, PRECISION)
                dq = _bwd_dq_inner(dq, q, do, lse, delta, K, V, offs_m, offs_d, mask_d, N_K, HEAD_DIM, qk_scale,
                                   diag_lo, tl.minimum(N_K, start_m + BLOCK_M2), True, True, BLOCK_N2, EVEN_D,
                                   DOT_FP32, PRECISION)
            else:
                n_full = (N_K // BLOCK_N2) * BLOCK_N2
                dq = _bwd_dq_inner(dq, q, do, lse, delta, K, V, offs_m, offs_d, mask_d, N_K, HEAD_DIM, qk_scale,
                                   0, n_full, False, False, BLOCK_N2, EVEN_D, DOT_FP32, PRECISION)
                if not EVEN_N2:
                    dq = _bwd_dq_inner(dq, q, do, lse, delta, K, V, offs_m, offs_d, mask_d, N_K, HEAD_DIM,
                                       qk_scale, n_full, N_K, False, True, BLOCK_N2, EVEN_D, DOT_FP32, PRECISION)
            # fmt: on
            dq_ptrs = DQ + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
            _store_rows(dq_ptrs, (dq * sm_scale).to(DQ.dtype.element_ty), mask_m, mask_d, EVEN_D)


# ``EVEN_*`` depend on the tile sizes, which the autotuner picks: Triton heuristics compute them at launch.
_fwd = triton.heuristics({"EVEN_N": lambda a: a["N_K"] % a["BLOCK_N"] == 0})(_fwd_kernel)
_bwd = triton.heuristics(
    {"EVEN_M1": lambda a: a["N_Q"] % a["BLOCK_M1"] == 0, "EVEN_N2": lambda a: a["N_K"] % a["BLOCK_N2"] == 0}
)(_bwd_kernel)


# ----------------------------------------------------------------------------------------------------------------
# Launch configurations (plumbing)
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FwdConfig:
    """Launch configuration of the forward kernel."""

    BLOCK_M: int
    """Query rows per program."""
    BLOCK_N: int
    """Key rows per step of the inner loop."""
    num_warps: int = 4
    """Warps per program (GPU only)."""
    num_stages: int = 2
    """Software-pipelining stages of the inner loop's loads (GPU only; each costs shared memory)."""

    def blocks(self) -> dict[str, int]:
        return {"BLOCK_M": self.BLOCK_M, "BLOCK_N": self.BLOCK_N}


@dataclass(frozen=True)
class BwdConfig:
    """Launch configuration of the backward kernel (one launch: dK/dV phase, then dQ phase)."""

    BLOCK_M1: int
    """dK/dV phase: query rows per step."""
    BLOCK_N1: int
    """dK/dV phase: key rows owned by a program."""
    BLOCK_M2: int
    """dQ phase: query rows owned by a program."""
    BLOCK_N2: int
    """dQ phase: key rows per step."""
    num_warps: int = 4
    """Warps per program (GPU only)."""
    num_stages: int = 2
    """Software-pipelining stages (GPU only)."""

    def blocks(self) -> dict[str, int]:
        return {
            "BLOCK_M1": self.BLOCK_M1,
            "BLOCK_N1": self.BLOCK_N1,
            "BLOCK_M2": self.BLOCK_M2,
            "BLOCK_N2": self.BLOCK_N2,
        }


@dataclass(frozen=True)
class LaunchConfig:
    """An explicit launch configuration of both kernels (bypasses the autotuner)."""

    fwd: FwdConfig
    """Forward kernel."""
    bwd: BwdConfig
    """Backward kernel."""


def candidate_configs(head_dim: int, dtype: torch.dtype) -> dict[str, tuple]:
    """The launch configurations the autotuner chooses from, ``{"fwd": (FwdConfig, ...), "bwd": (BwdConfig, ...)}``.

    Half precision: forward tiles of 128 queries by 64 keys with 4 warps for ``d <= 64``; for ``d = 128``, 128 x 128
    with 8 warps and 3 stages, plus a 128 x 64 candidate with 4 warps (less shared memory, more steps). All lie in
    the Triton tutorial's autotuning space, which on Hopper keeps 8 warps only for tiles of at least 128 x 128. The
    backward uses the tutorial's own choice, 32 x 128 (dK/dV) and 128 x 32 (dQ) tiles with 4 warps and 5 stages,
    plus a square 64 x 64 candidate at ``d = 128``. FP32 tiles are smaller (twice the bytes per element).
    """
    if dtype == torch.float32:
        return {"fwd": (FwdConfig(64, 32, 4, 2),), "bwd": (BwdConfig(32, 64, 64, 32, 4, 2),)}
    if head_dim <= 64:
        return {"fwd": (FwdConfig(128, 64, 4, 3),), "bwd": (BwdConfig(32, 128, 128, 32, 4, 5),)}
    return {
        "fwd": (FwdConfig(128, 128, 8, 3), FwdConfig(128, 64, 4, 3)),
        "bwd": (BwdConfig(32, 128, 128, 32, 4, 5), BwdConfig(64, 64, 64, 64, 4, 3)),
    }


def launch_config(head_dim: int, dtype: torch.dtype) -> LaunchConfig:
    """The first candidate of each kernel: what runs on the interpreter, and the autotuner's first guess."""
    cands = candidate_configs(head_dim, dtype)
    return LaunchConfig(cands["fwd"][0], cands["bwd"][0])


def shared_memory_bytes(cfg: FwdConfig | BwdConfig, head_dim: int, elem_bytes: int, num_stages: int | None = None):
    """Estimate of the shared memory a configuration needs: the resident tiles plus ``num_stages`` copies of the
    streamed ones (forward: Q resident, K and V streamed; backward: the larger of its two phases). A lower bound
    (the compiler may stage more), used to prune, with :class:`OutOfResources` retries as the backstop."""
    d = max(16, triton.next_power_of_2(head_dim))
    s = cfg.num_stages if num_stages is None else num_stages
    if isinstance(cfg, FwdConfig):
        return elem_bytes * (cfg.BLOCK_M * d + s * 2 * cfg.BLOCK_N * d)
    dkdv = 2 * cfg.BLOCK_N1 * d + s * 2 * cfg.BLOCK_M1 * d
    dq = 2 * cfg.BLOCK_M2 * d + s * 2 * cfg.BLOCK_N2 * d
    return elem_bytes * max(dkdv, dq)


def shared_memory_limit() -> int:
    """Shared memory per program on the current GPU (opt-in maximum), or the H100/H200 value (227 KiB) without one."""
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        for name in ("shared_memory_per_block_optin", "max_shared_memory_per_block_optin"):
            if getattr(props, name, None):
                return int(getattr(props, name))
    return 227 * 1024


def prune_by_shared_memory(cfgs, head_dim: int, elem_bytes: int, limit: int | None = None) -> list:
    """Keep the configurations that fit in ``limit`` bytes of shared memory, lowering ``num_stages`` (down to 1)
    where that makes one fit; if none fits, the smallest with one stage."""
    limit = shared_memory_limit() if limit is None else limit
    out = []
    for cfg in cfgs:
        for s in range(cfg.num_stages, 0, -1):
            if shared_memory_bytes(cfg, head_dim, elem_bytes, s) <= limit:
                new = dataclasses.replace(cfg, num_stages=s)
                if new not in out:
                    out.append(new)
                break
    if not out:
        out = [
            dataclasses.replace(min(cfgs, key=lambda c: shared_memory_bytes(c, head_dim, elem_bytes, 1)), num_stages=1)
        ]
    return out


def _to_triton(cfg: FwdConfig | BwdConfig) -> triton.Config:
    return triton.Config(cfg.blocks(), num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _from_triton(cfg: triton.Config, kind: str) -> FwdConfig | BwdConfig:
    cls = FwdConfig if kind == "fwd" else BwdConfig
    names = [f.name for f in dataclasses.fields(cls) if f.name.startswith("BLOCK")]
    return cls(**{n: cfg.kwargs[n] for n in names}, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _all_candidates(kind: str) -> list[triton.Config]:
    seen = []
    for dtype in SUPPORTED_DTYPES:
        for d in (64, 128):
            for cfg in candidate_configs(d, dtype)[kind]:
                if cfg not in seen:
                    seen.append(cfg)
    return [_to_triton(c) for c in seen]


def _early_prune(kind: str):
    def prune(configs, named_args, **kwargs):
        q = named_args["Q"]
        d = named_args["HEAD_DIM"]
        wanted = candidate_configs(d, q.dtype)[kind]
        kept = prune_by_shared_memory(wanted, d, q.element_size(), None if not INTERPRET else 227 * 1024)
        return [_to_triton(c) for c in kept]

    return prune


def _interpreter_bench(fn, quantiles=None):
    """``do_bench`` for the autotuner on the interpreter: one untimed and one timed call (CPU clock)."""
    fn()
    t0 = time.perf_counter()
    fn()
    t = (time.perf_counter() - t0) * 1e3
    return [t, t, t] if quantiles else t


_TUNE_KW = dict(do_bench=_interpreter_bench) if INTERPRET else {}
_fwd_tuned = triton.autotune(
    configs=_all_candidates("fwd"),
    key=["N_Q", "N_K", "HEAD_DIM", "CAUSAL"],
    prune_configs_by={"early_config_prune": _early_prune("fwd")},
    **_TUNE_KW,
)(_fwd)
_bwd_tuned = triton.autotune(
    configs=_all_candidates("bwd"),
    key=["N_Q", "N_K", "HEAD_DIM", "CAUSAL", "ATOMIC_DQ"],
    prune_configs_by={"early_config_prune": _early_prune("bwd")},
    reset_to_zero=["DQ_ACC"],  # the atomic variant accumulates into it: zero before every timed trial
    **_TUNE_KW,
)(_bwd)

_WORKING_STAGES: dict[tuple, int] = {}
_LAST_LAUNCH: dict[str, dict[str, Any]] = {}


def last_launch() -> dict[str, dict[str, Any]]:
    """What the most recent forward and backward launches used: ``{"fwd"|"bwd": {"config": {...}, "source":
    "autotune"|"explicit", "requested_stages": n}}``. ``num_stages`` below ``requested_stages`` means the GPU lacked
    shared memory and a retry with fewer stages worked."""
    return {k: dict(v) for k, v in _LAST_LAUNCH.items()}


def working_stages() -> dict[str, int]:
    """The stage count that worked for each explicitly launched configuration (remembered across calls)."""
    return {f"{name}:{cfg}:{dtype}:d{d}": n for (name, cfg, dtype, d), n in _WORKING_STAGES.items()}


def _record(kind: str, cfg: FwdConfig | BwdConfig, source: str, requested: int) -> None:
    _LAST_LAUNCH[kind] = {"config": dataclasses.asdict(cfg), "source": source, "requested_stages": requested}


def _launch(kind: str, grid, args, meta: dict[str, Any], cfg, dtype: torch.dtype, d: int) -> None:
    """Launch the forward or backward kernel with ``cfg``: a :class:`FwdConfig`/:class:`BwdConfig`, or ``"autotune"``.

    Explicit configurations that run out of shared memory are retried with fewer pipeline stages (same tiles, same
    grid); the stage count that worked is remembered per (kernel, configuration, dtype, head dim). If the autotuner
    finds no configuration that compiles, the candidates are launched explicitly in turn."""
    kernel, tuned = (_fwd, _fwd_tuned) if kind == "fwd" else (_bwd, _bwd_tuned)
    if cfg == "autotune":
        try:
            tuned[grid](*args, **meta)
            best = _from_triton(tuned.best_config, kind)
            _record(kind, best, "autotune", best.num_stages)
            return
        except OutOfResources:
            cfg = candidate_configs(d, dtype)[kind][-1]
    blocks = cfg.blocks()
    if INTERPRET:  # the interpreter takes no warps or stages
        kernel[grid](*args, **meta, **blocks)
        _record(kind, cfg, "explicit", cfg.num_stages)
        return
    key = (kind, cfg, str(dtype).removeprefix("torch."), d)
    first = _WORKING_STAGES.get(key, cfg.num_stages)
    for n in range(first, 0, -1):
        try:
            kernel[grid](*args, **meta, **blocks, num_warps=cfg.num_warps, num_stages=n)
        except OutOfResources:
            if n == 1:
                raise
            continue
        _WORKING_STAGES[key] = n
        _record(kind, dataclasses.replace(cfg, num_stages=n), "explicit", cfg.num_stages)
        return


def _count_dots(fn) -> tuple[int, int]:
    """``(always, atomic_only)``: calls of ``_dot``/``_dot_acc`` in a kernel's body, outside and inside
    ``if ATOMIC_DQ:`` blocks."""
    import inspect

    body = inspect.getsource(getattr(fn, "fn", fn)).split('"""')[2]  # the body, after the docstring
    always = atomic = 0
    guard = None  # indentation of the enclosing `if ATOMIC_DQ:`, if any
    for line in body.splitlines():
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if guard is not None and stripped and indent <= guard:
            guard = None
        if stripped.startswith("if ATOMIC_DQ:"):
            guard = indent
            continue
        k = stripped.count("_dot(") + stripped.count("_dot_acc(")
        if guard is None:
            always += k
        else:
            atomic += k
    return always, atomic


def matmuls_per_tile_pair(atomic_dq: bool) -> int:
    """Matrix products per (query tile, key tile) pair in the backward, counted in the kernels' source:
    ``_bwd_dkdv_inner`` (with its ``ATOMIC_DQ`` product when ``atomic_dq``) plus, without it, ``_bwd_dq_inner``."""
    always, atomic = _count_dots(_bwd_dkdv_inner)
    return always + atomic if atomic_dq else always + sum(_count_dots(_bwd_dq_inner))


# ----------------------------------------------------------------------------------------------------------------
# The autograd wrapper
# ----------------------------------------------------------------------------------------------------------------


def _check_inputs(q, k, v, causal, block_m, block_n, atomic_dq, config) -> None:
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
    if not isinstance(atomic_dq, bool):
        raise TypeError(f"atomic_dq must be a bool, got {type(atomic_dq).__name__}")
    if not (config is None or config == "autotune" or isinstance(config, LaunchConfig)):
        raise TypeError(f"config must be None, 'autotune' or a LaunchConfig, got {config!r}")
    if config is not None and (block_m is not None or block_n is not None):
        raise ValueError("give either config or block_m/block_n, not both")


def _resolve(config, block_m, block_n, d: int, dtype: torch.dtype):
    """``(fwd, bwd)``: each a FwdConfig/BwdConfig or ``"autotune"``."""
    if isinstance(config, LaunchConfig):
        return config.fwd, config.bwd
    if config == "autotune" or (config is None and not INTERPRET and block_m is None and block_n is None):
        return "autotune", "autotune"
    base = launch_config(d, dtype)
    fwd, bwd = base.fwd, base.bwd
    if block_m is not None:
        fwd = dataclasses.replace(fwd, BLOCK_M=block_m)
        bwd = dataclasses.replace(bwd, BLOCK_M1=block_m, BLOCK_M2=block_m)
    if block_n is not None:
        fwd = dataclasses.replace(fwd, BLOCK_N=block_n)
        bwd = dataclasses.replace(bwd, BLOCK_N1=block_n, BLOCK_N2=block_n)
    return fwd, bwd


def _forward(q, k, v, causal, scale, cfg):
    B, H, N_q, d = q.shape
    N_k = k.shape[2]
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # contiguous, whatever q's strides
    lse = torch.empty(B, H, N_q, dtype=torch.float32, device=q.device)  # base-2 log-sum-exp
    BLOCK_D = max(16, triton.next_power_of_2(d))
    args = (
        q, k, v, o, lse,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
        H, N_q, N_k, d, scale * LOG2E,
    )  # fmt: skip
    meta = dict(CAUSAL=causal, BLOCK_D=BLOCK_D, EVEN_D=BLOCK_D == d, DOT_FP32=INTERPRET,
                PRECISION="ieee" if q.dtype == torch.float32 else "tf32")  # fmt: skip

    def grid(m):
        return (triton.cdiv(N_q, m["BLOCK_M"]), B * H)

    _launch("fwd", grid, args, meta, cfg, q.dtype, d)
    return o, lse


def _backward(q, k, v, o, lse, do, causal, scale, cfg, atomic_dq):
    B, H, N_q, d = q.shape
    N_k = k.shape[2]
    BLOCK_D = max(16, triton.next_power_of_2(d))
    delta = torch.empty(B, H, N_q, dtype=torch.float32, device=q.device)
    _bwd_delta_kernel[(triton.cdiv(N_q, 64), B * H)](o, do, delta, N_q, d, BLOCK_M=64, BLOCK_D=BLOCK_D)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dq_acc = torch.zeros(q.shape, dtype=torch.float32, device=q.device) if atomic_dq else dq
    args = (q, k, v, do, dq, dk, dv, dq_acc, lse, delta, H, N_q, N_k, d, scale * LOG2E, scale)
    meta = dict(CAUSAL=causal, ATOMIC_DQ=atomic_dq, BLOCK_D=BLOCK_D, EVEN_D=BLOCK_D == d, DOT_FP32=INTERPRET,
                PRECISION="ieee" if q.dtype == torch.float32 else "tf32")  # fmt: skip

    def grid(m):  # program j owns key block j (dK, dV) and query block j (dQ)
        n = triton.cdiv(N_k, m["BLOCK_N1"])
        return (n if atomic_dq else max(n, triton.cdiv(N_q, m["BLOCK_M2"])), B * H)

    _launch("bwd", grid, args, meta, cfg, q.dtype, d)
    if atomic_dq:
        dq = (dq_acc * scale).to(q.dtype)
    return dq, dk, dv


class TritonFlashAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: saves q, k, v, O and the (base-2) log-sum-exp; the backward recomputes P."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, fwd_cfg, bwd_cfg, atomic_dq):  # noqa: D102
        # the forward kernel takes any strides with a contiguous last axis; the backward wants contiguous tensors
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        o, lse = _forward(q, k, v, causal, scale, fwd_cfg)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.config = (causal, scale, bwd_cfg, atomic_dq)
        return o

    @staticmethod
    def backward(ctx, do):  # noqa: D102
        q, k, v, o, lse = ctx.saved_tensors
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        dq, dk, dv = _backward(q, k, v, o, lse, do.contiguous(), *ctx.config)
        return dq, dk, dv, None, None, None, None, None


def triton_flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    *,
    scale: float | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    atomic_dq: bool = False,
    config: LaunchConfig | str | None = None,
) -> torch.Tensor:
    """Exact attention ``softmax(scale * q k^T) v`` by the Triton FlashAttention-2 kernels, differentiable.

    Args:
        q: queries ``(batch, heads, N_q, d)`` with ``16 <= d <= 128``; FP16, BF16 or FP32 (FP32 accumulation).
            Any strides with a contiguous last axis.
        k: keys ``(batch, heads, N_k, d)``.
        v: values ``(batch, heads, N_k, d)``.
        causal: query i attends to keys j <= i (needs ``N_q == N_k``).
        scale: logit scale, default ``1 / sqrt(d)``.
        block_m, block_n: override the query/key tile sizes of the first candidate configuration (powers of two
            >= 16) for every kernel.
        atomic_dq: backward accumulates dQ with FP32 atomic additions inside the dK/dV loop (FlashAttention-2's
            variant: 5 instead of 7 matmuls per tile pair, not deterministic).
        config: ``None`` (autotune on CUDA, first candidate on the interpreter), ``"autotune"``, or an explicit
            :class:`LaunchConfig`. :func:`last_launch` reports what ran.

    Returns:
        ``(batch, heads, N_q, d)`` in the input dtype. On CUDA the kernels are compiled; on CPU they run under
        Triton's interpreter (``INTERPRET``), slowly: use small sizes there.
    """
    _check_inputs(q, k, v, causal, block_m, block_n, atomic_dq, config)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    elif not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number or None, got {scale!r}")
    fwd_cfg, bwd_cfg = _resolve(config, block_m, block_n, q.shape[-1], q.dtype)
    return TritonFlashAttentionFunction.apply(q, k, v, causal, float(scale), fwd_cfg, bwd_cfg, atomic_dq)
