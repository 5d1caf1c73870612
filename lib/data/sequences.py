"""Synthetic sequence-to-sequence tasks, generated on the fly from a seed (no download).

The chapter's task is *reversal*: read ``x_1 .. x_n`` and write ``x_n .. x_1``. The first output token
depends on the last input token and the last output token on the first input token, so every
input-output pair is ``n`` steps apart in a left-to-right reader: long-range structure by construction.
``"copy"`` (write ``x_1 .. x_n`` again) is the same with the distances all equal to ``n``.
Chapter: "From RNNs to the Transformer" (``chapters/transformer.ipynb``).

Token layout
------------
PAD = 0, BOS = 1, EOS = 2, symbols ``3 .. 3 + n_symbols - 1``. Every tensor has ``seq_len = max_len + 1``
columns. The source is padded on the LEFT, so its last token always sits in the last column and
position ``max_len - j`` holds ``x_{n-j}`` whatever ``n`` is; targets are padded on the right.

- ``src``     ``PAD ... PAD BOS x_1 .. x_n``   (``pad_source="left"``, the chapter's choice)
              ``x_1 .. x_n EOS PAD ... PAD``   (``pad_source="right"``: the model must find the end itself)
- ``tgt_in``  ``BOS y_1 .. y_n PAD ...``   (teacher forcing: the decoder's input)
- ``tgt_out`` ``y_1 .. y_n EOS PAD ...``   (what is predicted)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PAD, BOS, EOS = 0, 1, 2
N_SPECIAL = 3
TASKS = ("reverse", "copy")


@dataclass(frozen=True)
class SequenceTask:
    """A synthetic seq2seq task with lengths drawn uniformly from ``[min_len, max_len]``."""

    kind: str = "reverse"
    """``"reverse"`` or ``"copy"``."""
    n_symbols: int = 10
    """Number of content symbols (the vocabulary also holds PAD, BOS, EOS)."""
    min_len: int = 20
    """Shortest content length ``n``."""
    max_len: int = 30
    """Longest content length ``n``."""
    pad_source: str = "left"
    """``"left"``: ``x_n`` always in the last column; ``"right"``: ``x_1`` always in the first."""

    def __post_init__(self) -> None:
        if self.kind not in TASKS:
            raise ValueError(f"kind must be one of {TASKS}, got {self.kind!r}")
        if not isinstance(self.n_symbols, int) or self.n_symbols < 2:
            raise ValueError(f"n_symbols must be an int >= 2, got {self.n_symbols!r}")
        if self.pad_source not in ("left", "right"):
            raise ValueError(f"pad_source must be 'left' or 'right', got {self.pad_source!r}")
        if not (isinstance(self.min_len, int) and isinstance(self.max_len, int) and 1 <= self.min_len <= self.max_len):
            raise ValueError(f"need ints 1 <= min_len <= max_len, got min_len={self.min_len}, max_len={self.max_len}")

    @property
    def vocab_size(self) -> int:
        """``n_symbols + 3`` (PAD, BOS, EOS)."""
        return self.n_symbols + N_SPECIAL

    @property
    def seq_len(self) -> int:
        """Padded length of ``src``, ``tgt_in`` and ``tgt_out``: ``max_len + 1``."""
        return self.max_len + 1


@dataclass(frozen=True)
class Seq2SeqBatch:
    """A padded batch; see the module docstring for the layout."""

    src: torch.Tensor
    """``(batch, seq_len)`` int64."""
    tgt_in: torch.Tensor
    """``(batch, seq_len)`` int64, starts with BOS."""
    tgt_out: torch.Tensor
    """``(batch, seq_len)`` int64, ends (before padding) with EOS."""
    lengths: torch.Tensor
    """``(batch,)`` content lengths ``n``."""

    def __len__(self) -> int:
        return self.src.shape[0]

    def to(self, device: torch.device | str) -> Seq2SeqBatch:
        return Seq2SeqBatch(*(t.to(device) for t in (self.src, self.tgt_in, self.tgt_out, self.lengths)))


def make_batch(
    task: SequenceTask, batch_size: int, generator: torch.Generator, lengths: torch.Tensor | None = None
) -> Seq2SeqBatch:
    """Draw ``batch_size`` examples of ``task``.

    Args:
        task: the task.
        batch_size: number of examples (>= 1).
        generator: a ``torch.Generator`` (all randomness comes from it).
        lengths: optional ``(batch_size,)`` content lengths in ``[1, task.max_len]``; default uniform
            in ``[task.min_len, task.max_len]``.
    """
    if not isinstance(task, SequenceTask):
        raise TypeError(f"task must be a SequenceTask, got {type(task).__name__}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    B, T = batch_size, task.seq_len
    if lengths is None:
        lengths = torch.randint(task.min_len, task.max_len + 1, (B,), generator=generator)
    elif lengths.shape != (B,) or int(lengths.min()) < 1 or int(lengths.max()) > task.max_len:
        raise ValueError(f"lengths must be ({B},) with values in [1, {task.max_len}], got {tuple(lengths.shape)}")
    lengths = lengths.long()
    pos = torch.arange(T).expand(B, T)  # (B, T)
    content = pos < lengths[:, None]  # (B, T) True on x_1 .. x_n
    x = torch.randint(N_SPECIAL, task.vocab_size, (B, T), generator=generator) * content
    if task.kind == "reverse":
        # y_j = x_{n+1-j}: gather index n - 1 - j (clamped where j >= n, masked anyway)
        idx = (lengths[:, None] - 1 - pos).clamp(min=0)
        y = x.gather(1, idx) * content
    else:
        y = x.clone()
    eos_at = pos == lengths[:, None]  # (B, T) position n
    tgt_out = y + EOS * eos_at
    tgt_in = torch.cat([torch.full((B, 1), BOS), y[:, :-1]], dim=1)
    if task.pad_source == "right":
        return Seq2SeqBatch(x + EOS * eos_at, tgt_in, tgt_out, lengths)
    # left-pad the source: shift row b right by T - 1 - n_b and put BOS in front of x_1
    shift = (pos - (T - 1 - lengths[:, None]) - 1).clamp(min=0)  # source column -> content index
    src = torch.where(pos > T - 1 - lengths[:, None], x.gather(1, shift), 0)
    src = src + BOS * (pos == T - 1 - lengths[:, None])
    return Seq2SeqBatch(src, tgt_in, tgt_out, lengths)


def sampler(task: SequenceTask, batch_size: int, seed: int):
    """``batch(step)`` for :func:`lib.train.train`: a fresh batch per step from one seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    return lambda step: make_batch(task, batch_size, generator)


def held_out(task: SequenceTask, n_per_length: int, seed: int, lengths: range | None = None) -> Seq2SeqBatch:
    """A fixed evaluation set: ``n_per_length`` examples at each length in ``lengths``.

    Default lengths are ``task.min_len .. task.max_len``. Use a seed different from training: with
    ``n_symbols ** n`` possible inputs (10^20 for n = 20) a repeat of a training sequence has
    negligible probability (the tests check there is none on a sample).
    """
    lengths = range(task.min_len, task.max_len + 1) if lengths is None else lengths
    if n_per_length < 1 or len(lengths) == 0:
        raise ValueError(f"need n_per_length >= 1 and a non-empty lengths range, got {n_per_length}, {lengths}")
    ls = torch.tensor(list(lengths)).repeat_interleave(n_per_length)
    return make_batch(task, len(ls), torch.Generator().manual_seed(seed), lengths=ls)
