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
