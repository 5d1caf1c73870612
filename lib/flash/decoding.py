"""Split-KV attention (Flash-Decoding): parallel partial attentions over key chunks, merged by log-sum-exp.

Dao, Haziza, Massa and Sizov (2023), "Flash-Decoding for long-context inference". At decoding time there is one
query per sequence, so the FlashAttention-2 grid (query blocks x batch x heads) has too few programs to fill a
GPU. Splitting the *keys* into ``S`` chunks gives ``S`` times more independent programs; each returns its
normalised partial output ``O_s`` and log-sum-exp ``L_s``, and the exact result is the merge

    L = log sum_s exp(L_s),    O = sum_s exp(L_s - L) O_s,

the online-softmax rescaling of the chapter applied once, across chunks. Chapter: "FlashAttention in three layers".

Glossary
--------
S        number of key chunks (``num_splits``)
O_s, L_s partial output and log-sum-exp of chunk s, shapes ``(batch, heads, N_q, d)`` and ``(batch, heads, N_q)``
"""

from __future__ import annotations

import math

import torch


def split_kv_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_splits: int, scale: float | None = None
) -> torch.Tensor:
    """``softmax(scale q k^T) v`` computed as ``num_splits`` independent key chunks merged by log-sum-exp.

    Args:
        q: queries ``(batch, heads, N_q, d)`` (``N_q = 1`` when decoding).
        k, v: keys and values ``(batch, heads, N_k, d)``; no mask (every query sees every key, as in decoding).
        num_splits: number of key chunks, ``1 <= num_splits <= N_k``.
        scale: logit scale, default ``1 / sqrt(d)``.

    Returns:
        ``(batch, heads, N_q, d)``, equal to full attention up to rounding.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not torch.is_tensor(t) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor (batch, heads, seq, head_dim)")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q, k, v shapes do not match: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    N_k = k.shape[2]
    if not isinstance(num_splits, int) or isinstance(num_splits, bool) or not 1 <= num_splits <= N_k:
        raise ValueError(f"num_splits must be an int in [1, {N_k}], got {num_splits!r}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    outs, lses = [], []
    for chunk in torch.arange(N_k, device=k.device).tensor_split(num_splits):  # each chunk: one GPU program
        s = scale * q @ k[:, :, chunk].transpose(-2, -1)  # (batch, heads, N_q, chunk)
        lse_s = torch.logsumexp(s, dim=-1)
        outs.append(torch.exp(s - lse_s[..., None]) @ v[:, :, chunk])  # normalised partial output O_s
        lses.append(lse_s)
    L_s = torch.stack(lses)  # (S, batch, heads, N_q)
    L = torch.logsumexp(L_s, dim=0)
    return (torch.exp(L_s - L)[..., None] * torch.stack(outs)).sum(0)  # sum_s exp(L_s - L) O_s
