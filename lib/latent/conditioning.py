"""What the latent UNet's cross-attention reads: a context sequence ``(B, L, d)`` and its mask ``(B, L)``, from the
frozen CLIP-style text tower (word tokens, as Stable Diffusion) or from the labels, one token per object (the
"grouped" reference that binds attributes by construction).

Chapter: "Latent diffusion" (``chapters/latent_diffusion.ipynb``).

Grouped tokens carry exactly what a caption says (``lib.data.shapes.caption``): every object's shape, colour and
size; the cell of a lone object; for two or more objects the relation of object ``k`` to object ``k + 1``. Token
``k < K`` is object ``k``: ``E_shape + E_colour + E_size + E_slot[k]`` (``+ E_row + E_col`` for a lone object).
``"grouped"`` adds token ``K + k``, the relation ``E_rel + E_slot[K + k]``, so the UNet must still bind a relation
token to two object tokens; ``"grouped_full"`` puts the relations on the objects instead, ``+ E_prev[rel(k, k - 1)]
+ E_next[rel(k, k + 1)]``, everything said of an object in its own token. A word-level encoder must learn which words
belong together; here the sum of embeddings *is* the binding (Yuksekgonul et al. 2023 on bag-of-words CLIP).

References: Rombach et al. 2022 (cross-attention conditioning on a frozen text encoder); Yuksekgonul et al., "When
and why vision-language models behave like bags-of-words", ICLR 2023.

Glossary
--------
context   ``(B, L, d)`` float, the keys/values of cross-attention
mask      ``(B, L)`` bool, True at real tokens (``lib.nn.unet``'s ``context_mask``)
K         ``labels.shape[1]``, objects per image at most; ``L = 2K - 1`` (grouped) or ``K`` (grouped_full)
features  ``(B, L, 7)`` int64 per-token ids (slot, shape, colour, size, row, col, relation) or ``(B, K, 8)``
          (..., relation to the previous object, to the next); the last id of each table means "none"
"""

from __future__ import annotations

import torch
from torch import nn

from lib.data.shapes import COLOURS, COLS, RELATIONS, ROWS, SHAPES, SIZES

CONDITIONINGS = ("grouped", "grouped_full", "clip", "clip_hardneg")
"""``"grouped"``: one token per object from the labels and one per relation; ``"grouped_full"``: one token per
object that also carries its relations to its neighbours; ``"clip"`` / ``"clip_hardneg"``: the frozen text tower of
``weights/shapes_clip`` / ``weights/shapes_clip_hardneg``."""
GROUPED = ("grouped", "grouped_full")
_TABLES = (None, len(SHAPES), len(COLOURS), len(SIZES), len(ROWS), len(COLS), len(RELATIONS), len(RELATIONS))


def check_labels(labels: torch.Tensor) -> torch.Tensor:
    """``labels (B, K, 5)`` int64 with ``-1`` rows for absent objects and at least one object per row."""
    if not torch.is_tensor(labels) or labels.dim() != 3 or labels.shape[2] != 5 or labels.is_floating_point():
        raise ValueError(f"labels must be an int tensor (B, K, 5), got {getattr(labels, 'shape', type(labels))}")
    if not bool((labels[:, :, 0] >= 0).any(1).all()):
        raise ValueError("labels: every image needs at least one present object (rows of -1 are absent)")
    return labels.long()


def grouped_features(labels: torch.Tensor, fold_relations: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and mask of the grouped context (see the module docstring).

    ``fold_relations=False``: ``(B, 2K - 1, 7)`` ids (slot, shape, colour, size, row, col, relation), tokens ``K + k``
    the relation of object ``k`` to ``k + 1``. ``True``: ``(B, K, 8)`` ids (slot, shape, colour, size, row, col,
    relation to object ``k - 1``, relation to object ``k + 1``): everything the caption says of an object in its token.
    """
    labels = check_labels(labels)
    B, K, _ = labels.shape
    n_cols = 8 if fold_relations else 7
    none = torch.tensor([t or 0 for t in _TABLES[:n_cols]])  # index "none" of each table
    feats = none.repeat(B, K if fold_relations else 2 * K - 1, 1)
    feats[:, :, 0] = torch.arange(feats.shape[1])
    present = labels[:, :, 0] >= 0  # (B, K)
    feats[:, :K, 1:4] = torch.where(present[..., None], labels[:, :, :3], none[1:4])
    lone = present.sum(1) == 1  # a lone object's caption names its cell
    feats[:, 0, 4:6] = torch.where(lone[:, None], labels[:, 0, 3:5], none[4:6])
    if K == 1:
        return feats, present
    a, b = labels[:, :-1], labels[:, 1:]  # (B, K - 1, 5): object k and object k + 1
    left, up = a[..., 4] < b[..., 4], a[..., 3] < b[..., 3]
    rel = torch.where(a[..., 4] != b[..., 4], torch.where(left, 0, 1), torch.where(up, 2, 3))  # RELATIONS order
    pair = present[:, :-1] & present[:, 1:]
    if not fold_relations:
        feats[:, K:, 6] = torch.where(pair, rel, none[6])
        return feats, torch.cat([present, pair], 1)
    feats[:, :-1, 7] = torch.where(pair, rel, none[7])  # object k's relation to object k + 1
    feats[:, 1:, 6] = torch.where(pair, rel ^ 1, none[6])  # object k + 1's relation to k: the inverse word
    return feats, present


class GroupedConditioner(nn.Module):
    """``labels (B, K, 5) -> (context (B, L, d), mask)``: per token the sum of learned embeddings of its ids
    (trained with the UNet); ``fold_relations`` as :func:`grouped_features`."""

    def __init__(self, d: int, max_objects: int = 3, fold_relations: bool = False) -> None:
        super().__init__()
        if not isinstance(d, int) or d < 1 or not isinstance(max_objects, int) or max_objects < 1:
            raise ValueError(f"d and max_objects must be positive ints, got d={d!r}, max_objects={max_objects!r}")
        self.d, self.max_objects, self.fold_relations = d, max_objects, fold_relations
        n_cols = 8 if fold_relations else 7
        sizes = [max_objects if fold_relations else 2 * max_objects - 1] + [n + 1 for n in _TABLES[1:n_cols]]
        self.tables = nn.ModuleList(nn.Embedding(n, d) for n in sizes)
        for t in self.tables:
            nn.init.normal_(t.weight, std=0.5)

    def forward(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if labels.shape[1:2] != (self.max_objects,):
            raise ValueError(f"labels must have shape (B, {self.max_objects}, 5), got {tuple(labels.shape)}")
        feats, mask = grouped_features(labels, self.fold_relations)
        ctx = sum(t(feats[..., i]) for i, t in enumerate(self.tables))  # (B, L, d)
        return ctx, mask


class ClipConditioner:
    """Frozen text tower of a :class:`lib.latent.clip.TrainedCLIP`: ``captions -> (tokens (B, L, d), mask)``."""

    def __init__(self, clip) -> None:
        if not callable(getattr(clip, "context", None)):
            raise TypeError(f"clip must be a lib.latent.clip.TrainedCLIP, got {type(clip).__name__}")
        self.clip = clip
        clip.model.eval().requires_grad_(False)
        self.d = clip.config.d_model

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(captions, str) or not isinstance(captions, (list, tuple)) or not captions:
            raise ValueError("captions must be a non-empty list of strings")
        return self.clip.context(list(captions))


def pad_context(ctx: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``ctx (B, L, d)`` and ``mask (B, L)`` with masked zeros to ``length >= L`` tokens."""
    L = ctx.shape[1]
    if length < L:
        raise ValueError(f"length must be >= the context length {L}, got {length}")
    ctx = torch.cat([ctx, ctx.new_zeros(ctx.shape[0], length - L, ctx.shape[2])], 1)
    return ctx, torch.cat([mask.bool(), mask.new_zeros(mask.shape[0], length - L, dtype=torch.bool)], 1)
