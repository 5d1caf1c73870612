"""FlashAttention-2 in plain PyTorch: a tiled forward and a backward by recomputation.

Dao et al. (2022), "FlashAttention", algorithms 1-2 (and 4 for the backward); Dao (2023), "FlashAttention-2",
algorithms 1-2 (outer loop over query blocks, deferred normalisation). Chapter: "FlashAttention in three layers".
This is the readable reference of the tiling: same loops as the Triton kernel in ``triton_kernels.py``, with
each block a PyTorch tensor instead of a tile in on-chip SRAM.

Glossary (one (batch, head) pair; the code carries both leading dims along)
--------
Q, K, V        ``(N_q, d)``, ``(N_k, d)``, ``(N_k, d_v)``; blocks ``Q_i`` of ``block_q`` rows, ``K_j, V_j`` of
               ``block_k`` rows
S_ij           ``scale * Q_i K_j^T``, ``(block_q, block_k)``, the only piece of the N_q x N_k logits ever held
m_i, l_i       running row maximum and normaliser of query block i (online softmax)
O_i            output block, normalised once after the inner loop (FA2's deferred normalisation)
L_i            log-sum-exp ``m_i + log l_i``: with O, the only thing saved for the backward pass
P_ij           ``exp(S_ij - L_i)``, the attention weights, recomputed in the backward pass
D_i            ``rowsum(dO_i * O_i)``, equal to ``rowsum(P_i * dP_i)`` (the chapter derives it)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class FlashForward:
    """What the forward pass keeps: the output and the per-row log-sum-exp."""

    o: torch.Tensor
    """Output ``(batch, heads, N_q, d_v)`` in the input dtype."""
    lse: torch.Tensor
    """Log-sum-exp of each row of the scaled logits, ``(batch, heads, N_q)``, FP32 (FP64 for FP64 inputs)."""


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> None:
    """Raise a clear ``TypeError``/``ValueError`` unless q, k, v are valid FlashAttention inputs."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not torch.is_tensor(t):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (batch, heads, seq, head_dim), got shape {tuple(t.shape)}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
        if t.shape[2] == 0 or t.shape[3] == 0:
            raise ValueError(f"{name} must have seq >= 1 and head_dim >= 1, got shape {tuple(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.shape[:2] != k.shape[:2] or k.shape[:2] != v.shape[:2]:
        raise ValueError(
            f"q, k, v must share (batch, heads), got {tuple(q.shape[:2])}, {tuple(k.shape[:2])}, {tuple(v.shape[:2])}"
        )
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"q and k must share head_dim, got {q.shape[3]} and {k.shape[3]}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v must share seq, got {k.shape[2]} and {v.shape[2]}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if causal and q.shape[2] != k.shape[2]:
        raise ValueError(f"causal=True needs as many queries as keys, got seq {q.shape[2]} and {k.shape[2]}")


def _check_block(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _causal_mask(S: torch.Tensor, i0: int, j0: int) -> torch.Tensor:
    """Set ``S[r, c] = -inf`` where key ``j0 + c`` lies after query ``i0 + r`` (top-left aligned)."""
    rows = torch.arange(i0, i0 + S.shape[-2], device=S.device)[:, None]
    cols = torch.arange(j0, j0 + S.shape[-1], device=S.device)[None, :]
    return S.masked_fill(cols > rows, float("-inf"))


def flash_attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, block_q: int, block_k: int, scale: float
) -> FlashForward:
    """FlashAttention-2 forward: outer loop over query blocks, inner loop over key/value blocks."""
    acc = _acc_dtype(q.dtype)
    B, H, N_q, _ = q.shape
    N_k, d_v = k.shape[2], v.shape[3]
    o = torch.empty(B, H, N_q, d_v, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, H, N_q, dtype=acc, device=q.device)
    for i0 in range(0, N_q, block_q):
        i1 = min(i0 + block_q, N_q)
        Q_i = q[:, :, i0:i1].to(acc) * scale  # (B, H, bq, d), scale folded into Q
        m_i = torch.full((B, H, i1 - i0), float("-inf"), dtype=acc, device=q.device)
        l_i = torch.zeros(B, H, i1 - i0, dtype=acc, device=q.device)
        O_i = torch.zeros(B, H, i1 - i0, d_v, dtype=acc, device=q.device)
        # causal: key blocks that start after the last query of this block are fully masked: never visit them
        k_end = min(i1, N_k) if causal else N_k
        for j0 in range(0, k_end, block_k):
            j1 = min(j0 + block_k, N_k)
            S_ij = Q_i @ k[:, :, j0:j1].to(acc).transpose(-2, -1)  # (B, H, bq, bk)
            if causal and j1 - 1 > i0:  # only blocks that cross the diagonal need a mask
                S_ij = _causal_mask(S_ij, i0, j0)
            m_new = torch.maximum(m_i, S_ij.amax(dim=-1))  # finite: key 0 is visible to every row
            P_ij = torch.exp(S_ij - m_new[..., None])  # (B, H, bq, bk)
            alpha = torch.exp(m_i - m_new)  # rescale factor for what was accumulated so far
            l_i = alpha * l_i + P_ij.sum(dim=-1)
            O_i = alpha[..., None] * O_i + P_ij @ v[:, :, j0:j1].to(acc)  # unnormalised
            m_i = m_new
        o[:, :, i0:i1] = (O_i / l_i[..., None]).to(q.dtype)  # deferred normalisation, once per block
        lse[:, :, i0:i1] = m_i + torch.log(l_i)
    return FlashForward(o=o, lse=lse)


def attention_delta(o: torch.Tensor, do: torch.Tensor) -> torch.Tensor:
    """``D = rowsum(dO * O)``, shape ``(..., N_q)``, in FP32 (FP64 for FP64 inputs)."""
    acc = _acc_dtype(o.dtype)
    return (do.to(acc) * o.to(acc)).sum(dim=-1)


def flash_attention_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    do: torch.Tensor,
    causal: bool,
    block_q: int,
    block_k: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FlashAttention-2 backward: recompute ``P_ij`` from the saved log-sum-exp; returns ``(dq, dk, dv)``.

    Outer loop over key blocks (each owns its ``dK_j, dV_j``), inner loop over query blocks.
    """
    acc = _acc_dtype(q.dtype)
    N_q, N_k = q.shape[2], k.shape[2]
    D = attention_delta(o, do)  # (B, H, N_q)
    dq = torch.zeros(q.shape, dtype=acc, device=q.device)
    dk = torch.empty(k.shape, dtype=acc, device=q.device)
    dv = torch.empty(v.shape, dtype=acc, device=q.device)
    for j0 in range(0, N_k, block_k):
        j1 = min(j0 + block_k, N_k)
        K_j, V_j = k[:, :, j0:j1].to(acc), v[:, :, j0:j1].to(acc)  # (B, H, bk, d), (B, H, bk, d_v)
        dK_j, dV_j = torch.zeros_like(K_j), torch.zeros_like(V_j)
        i_start = (j0 // block_q) * block_q if causal else 0  # query blocks above the diagonal see nothing
        for i0 in range(i_start, N_q, block_q):
            i1 = min(i0 + block_q, N_q)
            Q_i, dO_i = q[:, :, i0:i1].to(acc), do[:, :, i0:i1].to(acc)
            S_ij = scale * Q_i @ K_j.transpose(-2, -1)  # (B, H, bq, bk)
            if causal and j1 - 1 > i0:
                S_ij = _causal_mask(S_ij, i0, j0)
            P_ij = torch.exp(S_ij - lse[:, :, i0:i1, None])  # recomputed attention weights
            dV_j += P_ij.transpose(-2, -1) @ dO_i  # dV = P^T dO
            dP_ij = dO_i @ V_j.transpose(-2, -1)  # dP = dO V^T
            dS_ij = P_ij * (dP_ij - D[:, :, i0:i1, None])  # softmax backward with D = rowsum(dO * O)
            dq[:, :, i0:i1] += scale * dS_ij @ K_j  # dQ = scale dS K
            dK_j += scale * dS_ij.transpose(-2, -1) @ Q_i  # dK = scale dS^T Q
        dk[:, :, j0:j1], dv[:, :, j0:j1] = dK_j, dV_j
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class FlashAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: saves only q, k, v (inputs), O and the log-sum-exp; never the attention matrix."""

    @staticmethod
    def forward(ctx, q, k, v, causal, block_q, block_k, scale):  # noqa: D102
        fwd = flash_attention_forward(q, k, v, causal, block_q, block_k, scale)
        ctx.save_for_backward(q, k, v, fwd.o, fwd.lse)
        ctx.config = (causal, block_q, block_k, scale)
        return fwd.o

    @staticmethod
    def backward(ctx, do):  # noqa: D102
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = flash_attention_backward(q, k, v, o, lse, do, *ctx.config)
        return dq, dk, dv, None, None, None, None


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    block_q: int = 128,
    block_k: int = 128,
    scale: float | None = None,
) -> torch.Tensor:
    """Exact attention ``softmax(scale * q k^T) v`` computed block by block (FlashAttention-2), differentiable.

    Args:
        q: queries ``(batch, heads, N_q, d)``; FP16, BF16, FP32 or FP64 (accumulation in FP32, FP64 for FP64).
        k: keys ``(batch, heads, N_k, d)``.
        v: values ``(batch, heads, N_k, d_v)``.
        causal: query i attends to keys j <= i (needs ``N_q == N_k``).
        block_q: query rows per block (any length works; the last block may be shorter).
        block_k: key rows per block.
        scale: logit scale, default ``1 / sqrt(d)``.

    Returns:
        ``(batch, heads, N_q, d_v)`` in the input dtype. Extra memory is O(N) (output and log-sum-exp) plus
        one ``block_q x block_k`` tile, never ``N_q x N_k``.
    """
    check_qkv(q, k, v, causal)
    _check_block("block_q", block_q)
    _check_block("block_k", block_k)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    elif not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number or None, got {scale!r}")
    return FlashAttentionFunction.apply(q, k, v, causal, block_q, block_k, float(scale))
