"""FP8 logits with block quantisation and incoherent processing (FlashAttention-3's FP8 path, in PyTorch).

Shah et al. (2024), "FlashAttention-3", section 3.3: Q and K are quantised to FP8 (e4m3) with one scale per block
of rows, after multiplying both by the same random orthogonal matrix ``M = diag(s) H / sqrt(d)`` (``H`` a Hadamard
matrix, ``s`` random signs). Since ``M M^T = I``, ``(Q M)(K M)^T = Q K^T``, but an outlier feature of Q and K is
spread over all ``d`` coordinates, so it no longer dominates the rounding error of the products.
Chapter: "FlashAttention in three layers" (the FlashAttention-3 section).

Glossary
--------
E4M3_MAX   448, the largest finite ``torch.float8_e4m3fn``
block      rows of Q or K that share one scale ``amax / E4M3_MAX``
M          ``diag(s) H / sqrt(d)``, random orthogonal (incoherent processing)
"""

from __future__ import annotations

import math

import torch

E4M3_MAX = 448.0


def hadamard(d: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The ``(d, d)`` Sylvester-Hadamard matrix divided by ``sqrt(d)`` (orthogonal); ``d`` a power of two."""
    if not isinstance(d, int) or isinstance(d, bool) or d < 1 or d & (d - 1):
        raise ValueError(f"d must be a power of two, got {d!r}")
    H = torch.ones(1, 1, dtype=dtype)
    while H.shape[0] < d:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H / math.sqrt(d)


def random_rotation(d: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``M = diag(s) H / sqrt(d)`` with random signs ``s``: orthogonal, applied in ``O(d log d)`` on a GPU."""
    s = torch.randint(0, 2, (d,), generator=generator).to(dtype) * 2 - 1
    return s[:, None] * hadamard(d, dtype)


def quantize_fp8_blockwise(x: torch.Tensor, block: int) -> torch.Tensor:
    """Round ``x`` (rows, d) to FP8 e4m3 with one scale per ``block`` rows, and back to ``x.dtype``."""
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (rows, d), got shape {tuple(x.shape)}")
    if not isinstance(block, int) or isinstance(block, bool) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}")
    out = torch.empty_like(x)
    for i in range(0, x.shape[0], block):
        xb = x[i : i + block]
        scale = xb.abs().amax().clamp_min(torch.finfo(x.dtype).tiny) / E4M3_MAX
        out[i : i + block] = (xb / scale).to(torch.float8_e4m3fn).to(x.dtype) * scale
    return out


def fp8_logit_error(q: torch.Tensor, k: torch.Tensor, block: int, rotation: torch.Tensor | None = None) -> float:
    """Relative RMS error of ``Q K^T`` computed from FP8 (block-quantised) Q and K, optionally rotated by ``M``."""
    if q.dim() != 2 or k.dim() != 2 or q.shape[1] != k.shape[1]:
        raise ValueError(f"q and k must be (rows, d) with one d, got {tuple(q.shape)} and {tuple(k.shape)}")
    S = q @ k.T
    if rotation is not None:
        q, k = q @ rotation, k @ rotation
    S_fp8 = quantize_fp8_blockwise(q, block) @ quantize_fp8_blockwise(k, block).T
    return ((S_fp8 - S).pow(2).mean().sqrt() / S.pow(2).mean().sqrt()).item()
