"""Synthetic recall tasks of the Mamba paper: selective copying and induction heads (generated, no download).

Gu & Dao (2023), "Mamba", section 4.1 and tables 1-2; Olsson et al. (2022) for induction heads; Arjovsky et al.
(2016) for the original (non-selective) copying task. Chapter: "State space models" (``chapters/ssm.ipynb``).

Selective copying: ``K`` data tokens (symbols ``1..V``) sit at random positions among ``L - K`` noise tokens
(``0``); then ``K`` marker tokens (``V + 1``) ask the model to emit the data tokens in order, one per marker.
Because the positions are random, a time-invariant filter cannot know where to look: the model must select by
content. Induction heads: a random sequence over ``1..V`` contains a special token ``S = V + 1`` once, followed
by a token ``X``; the sequence ends with ``S`` and the model must predict ``X`` (recall what followed ``S``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RecallBatch:
    """Inputs and the targets read at the sequence's last ``targets.shape[1]`` positions."""

    x: torch.Tensor
    """Tokens, ``(batch, length)`` int64."""
    targets: torch.Tensor
    """Tokens to predict at the last ``k`` positions, ``(batch, k)`` int64."""


def _check(batch: int, V: int, generator) -> None:
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    if not isinstance(V, int) or V < 2:
        raise ValueError(f"V (data symbols) must be an int >= 2, got {V!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def selective_copying(batch: int, L: int, K: int, V: int, generator: torch.Generator | None = None) -> RecallBatch:
    """A batch of the selective-copying task.

    Args:
        batch: sequences in the batch.
        L: length of the context (data + noise); the input has ``L + K`` tokens.
        K: data tokens to copy (``1 <= K <= L``).
        V: data symbols, tokens ``1..V`` (noise is ``0``, the marker ``V + 1``: vocabulary ``V + 2``).
        generator: source of randomness.

    Returns:
        ``x (batch, L + K)`` and ``targets (batch, K)``, the data tokens in order of position.
    """
    _check(batch, V, generator)
    if not isinstance(K, int) or K < 1:
        raise ValueError(f"K must be a positive int, got {K!r}")
    if not isinstance(L, int) or L < K:
        raise ValueError(f"L must be an int >= K={K}, got {L!r}")
    data = torch.randint(1, V + 1, (batch, K), generator=generator)
    # K distinct positions per row, sorted: the order in which the model must emit the data
    pos = torch.rand(batch, L, generator=generator).argsort(dim=1)[:, :K].sort(dim=1).values
    x = torch.zeros(batch, L + K, dtype=torch.long)
    x.scatter_(1, pos, data)
    x[:, L:] = V + 1
    return RecallBatch(x, data)


def induction_heads(batch: int, L: int, V: int, generator: torch.Generator | None = None) -> RecallBatch:
    """A batch of the induction-heads task: ``L`` tokens over ``1..V``, the special token ``S = V + 1`` at a random
    position ``p <= L - 3`` followed by the token ``X``, and ``S`` again at the last position; target ``X``
    (``targets`` has shape ``(batch, 1)``). Vocabulary ``V + 2`` (token 0 is unused)."""
    _check(batch, V, generator)
    if not isinstance(L, int) or L < 3:
        raise ValueError(f"L must be an int >= 3, got {L!r}")
    x = torch.randint(1, V + 1, (batch, L), generator=generator)
    p = torch.randint(0, L - 2, (batch,), generator=generator)
    rows = torch.arange(batch)
    x[rows, p] = V + 1
    x[:, -1] = V + 1
    return RecallBatch(x, x[rows, p + 1].unsqueeze(1).clone())
