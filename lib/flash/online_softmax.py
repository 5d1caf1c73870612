"""Safe softmax and the one-pass online softmax of a single row (the heart of FlashAttention).

Milakov & Gimelshein (2018), "Online normalizer calculation for softmax", algorithm 3; Dao et al. (2022),
FlashAttention, section 3.1. Chapter: "FlashAttention in three layers".

Glossary
--------
x        one row of logits ``(N,)``, split into blocks ``x^(1), x^(2), ...`` of ``block`` entries
m        running maximum ``m_j = max(x_1..x_j)`` (``-inf`` while every entry seen is ``-inf``)
l        running normaliser ``l_j = sum_{i<=j} exp(x_i - m_j)``
o        running (unnormalised) output ``o_j = sum_{i<=j} exp(x_i - m_j) v_i`` when values are given
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _check_row(x: torch.Tensor, block: int) -> None:
    if not torch.is_tensor(x):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 1 or x.numel() == 0:
        raise ValueError(f"x must be one non-empty row of shape (N,), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be floating point, got {x.dtype}")
    if not isinstance(block, int) or isinstance(block, bool) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}")


def safe_softmax(x: torch.Tensor) -> torch.Tensor:
    """Two-pass safe softmax of a row: ``exp(x - max x) / sum exp(x - max x)``, shape ``(N,)``."""
    _check_row(x, 1)
    m = x.max()
    if m == float("-inf"):  # nothing to attend to: 0/0, as torch.softmax
        return torch.full_like(x, float("nan"))
    e = torch.exp(x - m)
    return e / e.sum()


@dataclass(frozen=True)
class OnlineSoftmaxState:
    """Statistics after one pass: the row's maximum ``m`` and normaliser ``l = sum exp(x - m)``."""

    m: torch.Tensor
    """Maximum of the row (0-dim tensor)."""
    l: torch.Tensor  # noqa: E741 (the paper's symbol)
    """``sum_i exp(x_i - m)`` (0-dim tensor)."""

    @property
    def lse(self) -> torch.Tensor:
        """Log-sum-exp of the row, ``m + log l`` (what FlashAttention saves for the backward pass)."""
        return self.m + torch.log(self.l)


def online_softmax_state(x: torch.Tensor, block: int = 1) -> OnlineSoftmaxState:
    """One pass over ``x`` in blocks of ``block`` entries, keeping only the running ``(m, l)``.

    Each block updates ``m_new = max(m, max x^(j))`` and ``l_new = l * exp(m - m_new) + sum exp(x^(j) - m_new)``.
    ``block=1`` is the element-by-element recurrence of the text.
    """
    _check_row(x, block)
    m = torch.tensor(float("-inf"), dtype=x.dtype, device=x.device)
    l = torch.zeros((), dtype=x.dtype, device=x.device)  # noqa: E741
    for start in range(0, x.numel(), block):
        x_j = x[start : start + block]
        m_new = torch.maximum(m, x_j.max())
        if m_new == float("-inf"):  # every entry so far is -inf: keep l = 0 (avoid exp(-inf + inf))
            continue
        # l_j = l_{j-1} e^{m_{j-1} - m_j} + sum_i e^{x_i - m_j}
        l = l * torch.exp(m - m_new) + torch.exp(x_j - m_new).sum()  # noqa: E741
        m = m_new
    return OnlineSoftmaxState(m=m, l=l)


def online_softmax(x: torch.Tensor, block: int = 1) -> torch.Tensor:
    """Softmax of one row from the one-pass statistics: ``exp(x - m) / l``, shape ``(N,)``.

    Equal to :func:`safe_softmax` (the chapter proves it); a row of only ``-inf`` gives NaN like torch.
    """
    state = online_softmax_state(x, block)
    return torch.exp(x - state.m) / state.l


def online_softmax_weighted_sum(x: torch.Tensor, v: torch.Tensor, block: int = 1) -> torch.Tensor:
    """``softmax(x) @ v`` in one pass with a rescaled output accumulator (one query row of FlashAttention).

    Args:
        x: logits ``(N,)``.
        v: values ``(N, d)``.
        block: entries per block.

    Returns:
        ``(d,)``: ``o_N / l_N`` where ``o_j = o_{j-1} e^{m_{j-1} - m_j} + sum_i e^{x_i - m_j} v_i``.
    """
    _check_row(x, block)
    if not torch.is_tensor(v) or v.dim() != 2 or v.shape[0] != x.shape[0]:
        raise ValueError(f"v must be a tensor of shape (N, d) with N = {x.shape[0]}, got {getattr(v, 'shape', v)}")
    m = torch.tensor(float("-inf"), dtype=x.dtype, device=x.device)
    l = torch.zeros((), dtype=x.dtype, device=x.device)  # noqa: E741
    o = torch.zeros(v.shape[1], dtype=x.dtype, device=x.device)  # (d,)
    for start in range(0, x.numel(), block):
        x_j, v_j = x[start : start + block], v[start : start + block]  # (b,), (b, d)
        m_new = torch.maximum(m, x_j.max())
        if m_new == float("-inf"):
            continue
        alpha = torch.exp(m - m_new)  # rescales what was accumulated under the old maximum
        p = torch.exp(x_j - m_new)  # (b,)
        l = l * alpha + p.sum()  # noqa: E741
        o = o * alpha + p @ v_j
        m = m_new
    return o / l
