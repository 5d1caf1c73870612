"""Word-level tokenizer for the procedural shapes captions (``lib.data.shapes``).

Chapter: "Latent diffusion" (``chapters/latent_diffusion.ipynb``). Stable Diffusion tokenizes with CLIP's byte-pair
encoder (Radford et al., 2021); our captions come from a closed vocabulary, so one id per word suffices and an
unknown word is an error, not a sub-word split.

Glossary
--------
ids     ``(B, L)`` int64 token ids: ``<bos> w_1 ... w_n <eos> <pad> ...``
mask    ``(B, L)`` bool, True at real tokens (``<bos>``, words, ``<eos>``), False at padding: the convention of
        ``lib.nn.unet``'s ``context_mask``
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIALS = (PAD, BOS, EOS)
"""Special tokens, ids 0, 1, 2."""


def split_words(text: str) -> list[str]:
    """Lower-case words of ``text``; punctuation (``, . ;``) is dropped."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return re.findall(r"[a-z0-9<>]+", text.lower())


@dataclass
class Tokens:
    """What :meth:`Tokenizer.encode` returns."""

    ids: torch.Tensor
    """``(B, L)`` int64."""
    mask: torch.Tensor
    """``(B, L)`` bool, True at real tokens."""


class Tokenizer:
    """Word-level tokenizer: ``<pad>, <bos>, <eos>`` then the vocabulary in the given order.

    Args:
        vocabulary: the words (default ``lib.data.shapes.VOCABULARY``); duplicates or specials are rejected.
    """

    def __init__(self, vocabulary: Iterable[str] | None = None) -> None:
        if vocabulary is None:
            from lib.data.shapes import VOCABULARY

            vocabulary = VOCABULARY
        words = list(vocabulary)
        if not words or not all(isinstance(w, str) and w for w in words):
            raise ValueError("vocabulary must be a non-empty sequence of non-empty strings")
        if len(set(words)) != len(words) or set(words) & set(SPECIALS):
            raise ValueError("vocabulary has duplicate words or contains a special token")
        self.itos: list[str] = [*SPECIALS, *words]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        self.pad_id, self.bos_id, self.eos_id = (self.stoi[s] for s in SPECIALS)

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode_one(self, text: str) -> list[int]:
        """``[<bos>, w_1, ..., w_n, <eos>]`` ids of one caption; ``ValueError`` names an unknown word."""
        ids = [self.bos_id]
        for w in split_words(text):
            if w not in self.stoi or w in SPECIALS:
                raise ValueError(f"unknown word {w!r} in caption {text!r} (not in the tokenizer's vocabulary)")
            ids.append(self.stoi[w])
        return ids + [self.eos_id]

    def encode(self, texts: Sequence[str] | str, max_len: int | None = None) -> Tokens:
        """Encode captions to padded ``ids (B, L)`` and ``mask (B, L)``.

        Args:
            texts: a caption or a list of captions.
            max_len: ``L``; default the longest encoded caption. A longer caption raises ``ValueError``.
        """
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, Sequence) or not texts:
            raise ValueError("texts must be a non-empty list of strings")
        rows = [self.encode_one(t) for t in texts]
        longest = max(map(len, rows))
        L = longest if max_len is None else max_len
        if not isinstance(L, int) or L < 2:
            raise ValueError(f"max_len must be an int >= 2, got {max_len!r}")
        if longest > L:
            raise ValueError(f"max_len={L} is shorter than the longest caption ({longest} tokens with <bos>/<eos>)")
        ids = torch.full((len(rows), L), self.pad_id, dtype=torch.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return Tokens(ids, ids != self.pad_id)

    def decode(self, ids: torch.Tensor | Sequence[Sequence[int]]) -> list[str]:
        """Captions of ``ids (B, L)`` (specials dropped, words joined by single spaces)."""
        ids = torch.as_tensor(ids)
        if ids.dim() != 2:
            raise ValueError(f"ids must have shape (B, L), got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(self)):
            raise ValueError(f"ids must be in [0, {len(self)}), got range [{int(ids.min())}, {int(ids.max())}]")
        return [" ".join(self.itos[i] for i in row.tolist() if i > 2) for row in ids]
