"""HBM traffic (elements read + written) of standard attention and of the tiled FlashAttention-2 forward.

Dao et al. (2022), theorem 2 and proposition 3: standard attention needs Theta(N d + N^2) HBM accesses,
FlashAttention Theta(N^2 d^2 / M) for an on-chip memory of M elements (d <= M <= N d).
Chapter: "FlashAttention in three layers" (the I/O complexity section).

Glossary
--------
N, d        sequence length (queries = keys) and head dim
M           on-chip memory (SRAM) per program, in elements
B_r, B_c    query and key rows per tile; FA chooses B_c = ceil(M / 4d), B_r = min(B_c, d)
T_r         number of query blocks, ceil(N / B_r): each streams all of K and V once
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Traffic:
    """HBM elements moved by one attention forward pass (one batch element, one head)."""

    reads: int
    """Elements read from HBM."""
    writes: int
    """Elements written to HBM."""

    @property
    def total(self) -> int:
        """Reads plus writes."""
        return self.reads + self.writes


def _check(N: int, d: int) -> None:
    for name, x in (("N", N), ("d", d)):
        if not isinstance(x, int) or isinstance(x, bool) or x < 1:
            raise ValueError(f"{name} must be a positive int, got {x!r}")


def standard_attention_traffic(N: int, d: int) -> Traffic:
    """Standard attention, three kernels: ``S = Q K^T`` (write S), ``P = softmax(S)`` (read S, write P), ``O = P V``."""
    _check(N, d)
    reads = 2 * N * d + N * N + N * N + N * d  # Q, K; S; P, V
    writes = N * N + N * N + N * d  # S; P; O
    return Traffic(reads=reads, writes=writes)


def tile_sizes(M: int, d: int) -> tuple[int, int]:
    """Tile sizes ``(B_big, B_small) = (ceil(M / 4d), min(ceil(M / 4d), d))`` for ``M`` elements of SRAM.

    FlashAttention-1 (algorithm 1, line 1) takes ``B_c = B_big`` key rows and ``B_r = B_small`` query rows; the
    FlashAttention-2 loop order swaps the roles (``B_r = B_big`` query rows stay on chip). Either way four
    ``B_big x d`` operand tiles and the ``B_big x B_small <= M / 4`` score tile fit in ``M``.
    """
    _check(M, d)
    B_big = math.ceil(M / (4 * d))
    return B_big, min(B_big, d)


def flash1_traffic(N: int, d: int, M: int) -> Traffic:
    """FlashAttention-1 order: outer loop over key/value blocks (K, V read once); for each, the inner loop reads
    every query block and reads *and writes* the running ``O, l, m``: ``T_c = ceil(N / B_c)`` passes over them."""
    _check(N, d)
    B_c, _ = tile_sizes(M, d)
    T_c = math.ceil(N / B_c)
    reads = 2 * N * d + T_c * (N * d + N * d + 2 * N)  # K, V; per pass Q, O, (l, m)
    writes = T_c * (N * d + 2 * N)  # per pass O, (l, m)
    return Traffic(reads=reads, writes=writes)


def flash2_traffic(N: int, d: int, M: int) -> Traffic:
    """FlashAttention-2 order: each query block is read once and its output written once (O and the log-sum-exp);
    it streams every key/value block: ``T_r = ceil(N / B_r)`` passes over K and V."""
    _check(N, d)
    B_r, _ = tile_sizes(M, d)
    T_r = math.ceil(N / B_r)
    reads = N * d + T_r * 2 * N * d  # Q once; K, V once per query block
    writes = N * d + N  # O and L
    return Traffic(reads=reads, writes=writes)


def causal_tile_states(N: int, block_m: int, block_n: int):
    """Which tiles the causal forward kernel visits: a ``(T_r, T_c)`` integer array with 0 = skipped (entirely above
    the diagonal), 1 = visited without a mask, 2 = visited with the causal mask (straddles the diagonal).

    The bounds are those of ``_fwd_kernel`` in ``triton_kernels.py``: query block ``i`` (rows ``[i B_r, (i+1) B_r)``)
    runs unmasked over key tiles starting below ``diag_lo = floor(i B_r / B_c) B_c`` and masked over the tiles
    from ``diag_lo`` up to its last row. For square blocks (``B_r = B_c``) and ``T`` blocks per side, ``T (T + 1) / 2``
    tiles are visited, ``T`` of them masked.
    """
    _check(N, 1)
    _check(block_m, 1)
    _check(block_n, 1)
    import numpy as np

    T_r, T_c = math.ceil(N / block_m), math.ceil(N / block_n)
    states = np.zeros((T_r, T_c), dtype=np.int64)
    for i in range(T_r):
        start_m = i * block_m
        diag_lo = (start_m // block_n) * block_n
        hi = min(N, start_m + block_m)
        for j in range(T_c):
            start_n = j * block_n
            if start_n < diag_lo:
                states[i, j] = 1
            elif start_n < hi:
                states[i, j] = 2
    return states
