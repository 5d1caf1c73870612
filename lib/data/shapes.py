"""Procedural captioned shapes: 32x32 images of one to three coloured objects with captions, labels, masks and edges.

Chapter: "Latent diffusion" (``chapters/latent_diffusion.ipynb``); reused by the ControlNet chapter (masks, edges)
and the Stable Diffusion 3 chapter. Generated from a seed (no download), deterministic, about 2 CPU-seconds for 20,000
images on one CPU thread.

Each object has a shape, a colour, a size and a cell of a 3x3 grid (with a pixel of jitter). Objects in one image
have distinct shapes, distinct colours and distinct cells, and are at least one background pixel apart in every
direction (so 8-connected components of the foreground are exactly the objects). Shapes are drawn with hard edges
from fixed pixel templates, so ``masks`` are exact. Some (shape, colour) pairs (:data:`HELD_OUT`) never appear in the
``"train"`` and ``"test"`` splits; every ``"heldout"`` image contains at least one of them (compositional
generalisation).

Glossary
--------
labels     ``(N, K, 5)`` int64, columns :data:`ATTRIBUTES` = (shape, colour, size, row, col), indices into
           :data:`SHAPES`, :data:`COLOURS`, :data:`SIZES`, :data:`ROWS`, :data:`COLS`; ``-1`` rows for absent objects
caption    one of several templates with synonyms and word orders, naming every object's shape, colour and size,
           the cell for one object, and for objects ``k, k+1`` the relation :func:`relation` (true of the cells)
relation   ``"left of"``/``"right of"`` when the columns differ, else ``"above"``/``"below"``
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan")
SIZES = ("small", "large")
ROWS = ("top", "middle", "bottom")
COLS = ("left", "centre", "right")
ATTRIBUTES = ("shape", "colour", "size", "row", "col")
"""Column names of ``labels``."""
RELATIONS = ("left of", "right of", "above", "below")
HELD_OUT = (("triangle", "blue"), ("circle", "green"), ("cross", "magenta"))
"""(shape, colour) pairs never drawn in ``"train"`` or ``"test"``."""

PALETTE = torch.tensor(
    [[0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 1.0], [0.95, 0.9, 0.1], [0.9, 0.1, 0.9], [0.1, 0.9, 0.9]]
)
"""RGB in [0, 1] of :data:`COLOURS`; each has a channel >= 0.8, the background is <= 0.15 in every channel."""
BACKGROUND = 0.1
"""Grey level in [0, 1] of the plain background (the gradient varies by ``gradient_contrast`` around it)."""
SIZE_PX = (5, 9)
"""Width in pixels of a small and a large object."""
CENTRES = (5, 16, 26)
"""Pixel index of the centre of each grid cell (rows and columns alike) before jitter."""
_SYNONYMS = {
    "size": (("small", "little", "tiny"), ("large", "big")),
    "shape": (("circle", "disc"), ("square",), ("triangle",), ("cross", "plus")),
    "relation": (("left of", "to the left of"), ("right of", "to the right of"), ("above", "over"), ("below", "under")),
}
_FILLERS = "a there is picture of that in at the and"


def _templates() -> torch.Tensor:
    """``(4, 2, 9, 9)`` bool: each shape at each size, centred in a 9x9 box."""
    t = torch.zeros(len(SHAPES), len(SIZES), 9, 9, dtype=torch.bool)
    d = torch.arange(9) - 4  # offset of each pixel from the centre pixel
    dy, dx = d[:, None], d[None, :]
    for j, s in enumerate(SIZE_PX):
        h = s // 2
        inside = (dy.abs() <= h) & (dx.abs() <= h)
        arm = 0 if s < 7 else 1  # half-thickness of the cross's arms
        t[0, j] = dy**2 + dx**2 <= (s / 2) ** 2
        t[1, j] = inside
        t[2, j] = inside & (2 * dx.abs() <= dy + h)  # apex at the top row, base the bottom row
        t[3, j] = inside & ((dy.abs() <= arm) | (dx.abs() <= arm))
    return t


TEMPLATES = _templates()


@dataclass(frozen=True)
class ShapesConfig:
    """How images are drawn."""

    resolution: int = 32
    """Image side in pixels (only 32: sizes and cells are laid out for it)."""
    max_objects: int = 3
    """K: objects per image at most (1..3); ``labels`` and ``masks`` have K slots."""
    background: str = "plain"
    """``"plain"`` (grey level :data:`BACKGROUND`) or ``"gradient"`` (a linear grey ramp in a random direction)."""
    jitter: int = 1
    """Objects move by up to this many pixels (0 or 1) from their cell centre, independently in x and y."""
    gradient_contrast: float = 0.1
    """Peak-to-peak grey range of the gradient background, in [0, 1] units (at most 0.1)."""

    def __post_init__(self) -> None:
        if self.resolution != 32:
            raise ValueError(f"resolution must be 32, got {self.resolution!r}")
        if self.max_objects not in (1, 2, 3):
            raise ValueError(f"max_objects must be 1, 2 or 3, got {self.max_objects!r}")
        if self.background not in ("plain", "gradient"):
            raise ValueError(f"background must be 'plain' or 'gradient', got {self.background!r}")
        if self.jitter not in (0, 1):
            raise ValueError(f"jitter must be 0 or 1, got {self.jitter!r}")
        if not 0.0 <= self.gradient_contrast <= 0.1:
            raise ValueError(f"gradient_contrast must be in [0, 0.1], got {self.gradient_contrast!r}")


@dataclass
class ShapesBatch:
    """N generated images with everything known about them."""

    images: torch.Tensor
    """``(N, 3, 32, 32)`` float32 in [-1, 1]."""
    labels: torch.Tensor
    """``(N, K, 5)`` int64: (shape, colour, size, row, col) per object, ``-1`` rows for absent objects."""
    n_objects: torch.Tensor
    """``(N,)`` int64: objects in each image (present objects fill the first slots)."""
    masks: torch.Tensor
    """``(N, K, 32, 32)`` bool: exactly the pixels drawn for each object (all False for absent ones)."""
    edges: torch.Tensor
    """``(N, 1, 32, 32)`` float32 in {0, 1}: object pixels with a 4-neighbour outside their object."""
    captions: list[str]
    """One caption per image."""

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, idx: Any) -> ShapesBatch:
        """The sub-batch at ``idx`` (an int, slice, index list or tensor, or boolean mask)."""
        ids = torch.arange(len(self))[idx].reshape(-1)  # an int gives a batch of one
        return ShapesBatch(self.images[ids], self.labels[ids], self.n_objects[ids], self.masks[ids],
                           self.edges[ids], [self.captions[i] for i in ids.tolist()])  # fmt: skip

    def batches(self, batch_size: int, generator: torch.Generator | None = None):
        """Shuffled sub-batches of ``batch_size``, one epoch (``generator`` for reproducibility)."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        perm = torch.randperm(len(self), generator=generator)
        for i in range(0, len(self), batch_size):
            yield self[perm[i : i + batch_size]]


def relation(labels_a: Any, labels_b: Any) -> str:
    """The relation word of object ``a`` to object ``b`` (label rows, at least (.., .., .., row, col)):
    ``"left of"``/``"right of"`` when their columns differ, else ``"above"``/``"below"``."""
    (ra, ca), (rb, cb) = (tuple(int(v) for v in lab[3:5]) for lab in (labels_a, labels_b))
    if min(ra, ca, rb, cb) < 0 or (ra, ca) == (rb, cb):
        raise ValueError(f"labels_a and labels_b must be present objects in distinct cells, got {(ra, ca)}, {(rb, cb)}")
    if ca != cb:
        return "left of" if ca < cb else "right of"
    return "above" if ra < rb else "below"


def relation_holds(word: str, cell_a: tuple[int, int], cell_b: tuple[int, int]) -> bool:
    """Whether ``a word b`` is true of cells ``(row, col)``: left/right compare columns, above/below rows."""
    if word not in RELATIONS:
        raise ValueError(f"word must be one of {RELATIONS}, got {word!r}")
    (ra, ca), (rb, cb) = cell_a, cell_b
    return {"left of": ca < cb, "right of": ca > cb, "above": ra < rb, "below": ra > rb}[word]


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _object_phrase(lab: list[int], rng: np.random.Generator) -> str:
    shape, colour, size = _pick(rng, _SYNONYMS["shape"][lab[0]]), COLOURS[lab[1]], _pick(rng, _SYNONYMS["size"][lab[2]])
    return f"a {colour} {shape} that is {size}" if rng.random() < 0.25 else f"a {size} {colour} {shape}"


def caption(labels_row: Any, rng: np.random.Generator) -> str:
    """A caption for one image's labels ``(K, 5)`` (``-1`` rows absent), drawn with ``rng`` among templates.

    One object: its size, colour, shape and cell ("a small red circle in the top left"). Several: each object's
    size, colour and shape, and for each consecutive pair ``k, k+1`` the relation :func:`relation` (objects may be
    named in reverse order with the inverse relation: "a large blue square right of a small red circle").
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    labs = [[int(v) for v in row] for row in torch.as_tensor(labels_row).reshape(-1, 5).tolist() if row[0] >= 0]
    if not labs:
        raise ValueError("labels_row must contain at least one present object")
    prefix = _pick(rng, ("", "", "there is ", "a picture of "))
    if len(labs) == 1:
        lab = labs[0]
        where = f"{_pick(rng, ('in', 'at'))} the {ROWS[lab[3]]} {COLS[lab[4]]}"
        obj = _object_phrase(lab, rng)
        return f"{where} there is {obj}" if not prefix and rng.random() < 0.3 else f"{prefix}{obj} {where}"
    order = list(range(len(labs)))[:: -1 if rng.random() < 0.5 else 1]
    rel = lambda a, b: _pick(rng, _SYNONYMS["relation"][RELATIONS.index(relation(labs[a], labs[b]))])
    first = _object_phrase(labs[order[0]], rng)
    text = f"{prefix}{first} {rel(order[0], order[1])} {_object_phrase(labs[order[1]], rng)}"
    for a, b in zip(order[1:-1], order[2:], strict=True):
        ref = f"the {COLOURS[labs[a][1]]} {_pick(rng, _SYNONYMS['shape'][labs[a][0]])}"
        text += f" and {ref} is {rel(a, b)} {_object_phrase(labs[b], rng)}"
    return text


def _vocabulary() -> tuple[str, ...]:
    words = set(_FILLERS.split()) | {"is"} | set(COLOURS) | set(ROWS) | set(COLS)
    for group in _SYNONYMS.values():
        for options in group:
            for phrase in options:
                words |= set(phrase.split())
    return tuple(sorted(words))


VOCABULARY = _vocabulary()
"""Every word a caption can contain, sorted."""

_SPLITS = ("train", "test", "heldout")
_HELD = torch.zeros(len(SHAPES), len(COLOURS), dtype=torch.bool)
for _s, _c in HELD_OUT:
    _HELD[SHAPES.index(_s), COLOURS.index(_c)] = True


def _sample_objects(rng: np.random.Generator, n: int, k: torch.Tensor, kmax: int) -> torch.Tensor:
    """``(n, kmax, 5)`` labels with distinct shapes, colours and cells per image; absent slots ``-1``."""
    first = lambda m, width: torch.from_numpy(np.argsort(rng.random((n, width)), axis=1)[:, :m].copy())
    shape, colour, cell = first(kmax, len(SHAPES)), first(kmax, len(COLOURS)), first(kmax, 9)
    size = torch.from_numpy(rng.integers(0, len(SIZES), (n, kmax)))
    labels = torch.stack([shape, colour, size, cell // 3, cell % 3], dim=-1).long()
    labels[torch.arange(kmax)[None, :] >= k[:, None]] = -1
    return labels


def _held_count(labels: torch.Tensor) -> torch.Tensor:
    present = labels[..., 0] >= 0
    return (_HELD[labels[..., 0].clamp(min=0), labels[..., 1].clamp(min=0)] & present).sum(1)


def make_shapes(
    n: int, *, seed: int, n_objects: int | None = None, split: str = "train", config: ShapesConfig | None = None
) -> ShapesBatch:
    """Generate ``n`` images, deterministically from ``(seed, split)``.

    Args:
        n: number of images (>= 1).
        seed: non-negative int.
        n_objects: objects per image (1..K), or ``None`` for uniform in 1..K.
        split: ``"train"``/``"test"`` (no :data:`HELD_OUT` pair) or ``"heldout"`` (at least one in every image).
        config: a :class:`ShapesConfig` (K = ``config.max_objects``).
    """
    config = ShapesConfig() if config is None else config
    if not isinstance(config, ShapesConfig):
        raise TypeError(f"config must be a ShapesConfig, got {type(config).__name__}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    kmax = config.max_objects
    if n_objects is not None and (not isinstance(n_objects, int) or not 1 <= n_objects <= kmax):
        raise ValueError(f"n_objects must be None or an int in 1..{kmax}, got {n_objects!r}")
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    rng = np.random.default_rng([seed, _SPLITS.index(split)])
    k = torch.full((n,), n_objects) if n_objects else torch.from_numpy(rng.integers(1, kmax + 1, n))
    # labels, redrawn for the images whose held-out count does not suit the split
    labels = _sample_objects(rng, n, k, kmax)
    bad = (_held_count(labels) == 0) if split == "heldout" else (_held_count(labels) > 0)
    while bool(bad.any()):
        labels[bad] = _sample_objects(rng, int(bad.sum()), k[bad], kmax)
        bad = (_held_count(labels) == 0) if split == "heldout" else (_held_count(labels) > 0)
    # object centres (y, x) = cell centre + jitter; jitter redrawn (then zeroed) where two objects would touch
    centre = torch.tensor(CENTRES)[labels[..., 3:5].clamp(min=0)]  # (n, K, 2)
    half = torch.tensor(SIZE_PX)[labels[..., 2].clamp(min=0)] // 2  # (n, K)
    jit = torch.from_numpy(rng.integers(-config.jitter, config.jitter + 1, (n, kmax, 2)))
    present = labels[..., 0] >= 0
    for attempt in range(6):
        touch = _touching(centre + jit, half, present)
        if not bool(touch.any()):
            break
        redraw = torch.from_numpy(rng.integers(-config.jitter, config.jitter + 1, (int(touch.sum()), kmax, 2)))
        jit[touch] = redraw if attempt < 5 else 0
    yx = centre + jit
    masks = _draw_masks(labels, yx, present)
    images = _background(rng, n, config)
    colour = PALETTE[labels[..., 1].clamp(min=0)]  # (n, K, 3)
    for j in range(kmax):
        images = torch.where(masks[:, j, None], colour[:, j, :, None, None], images)
    cap_rng = np.random.default_rng([seed, _SPLITS.index(split), 1])
    captions = [caption(row, cap_rng) for row in labels]
    return ShapesBatch(images * 2 - 1, labels, k.long(), masks, _edges(masks), captions)


def _touching(yx: torch.Tensor, half: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``(n,)`` bool: some two objects' boxes are less than one background pixel apart (or leave the image)."""
    lo, hi = yx - half[..., None], yx + half[..., None]  # (n, K, 2) inclusive pixel bounds
    gap = torch.maximum(lo[:, :, None] - hi[:, None], lo[:, None] - hi[:, :, None])  # (n, K, K, 2)
    close = (gap < 2).all(-1) & present[:, :, None] & present[:, None, :]
    close &= ~torch.eye(yx.shape[1], dtype=torch.bool)
    outside = ((lo < 0) | (hi > 31)).any(-1) & present
    return close.any((1, 2)) | outside.any(1)


def _draw_masks(labels: torch.Tensor, yx: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``(n, K, 32, 32)`` bool: each present object's template pasted at its centre."""
    n, kmax = labels.shape[:2]
    masks = torch.zeros(n, kmax, 32 + 8, 32 + 8, dtype=torch.bool)  # 4 pixels of margin on each side
    d = torch.arange(9)
    rows = (yx[..., 0, None, None] + d[:, None]).expand(n, kmax, 9, 9)  # (n, K, 9, 9) with the margin offset
    cols = (yx[..., 1, None, None] + d[None, :]).expand(n, kmax, 9, 9)
    ni = torch.arange(n)[:, None, None, None].expand(n, kmax, 9, 9)
    ki = torch.arange(kmax)[None, :, None, None].expand(n, kmax, 9, 9)
    stamp = TEMPLATES[labels[..., 0].clamp(min=0), labels[..., 2].clamp(min=0)] & present[..., None, None]
    masks[ni, ki, rows, cols] = stamp
    return masks[:, :, 4:-4, 4:-4].contiguous()


def _edges(masks: torch.Tensor) -> torch.Tensor:
    """``(n, 1, 32, 32)`` float: mask pixels with a 4-neighbour outside the same object."""
    p = torch.nn.functional.pad(masks, (1, 1, 1, 1))
    interior = masks & p[..., :-2, 1:-1] & p[..., 2:, 1:-1] & p[..., 1:-1, :-2] & p[..., 1:-1, 2:]
    return (masks & ~interior).any(1, keepdim=True).float()


def _background(rng: np.random.Generator, n: int, config: ShapesConfig) -> torch.Tensor:
    """``(n, 3, 32, 32)`` in [0, 1]: plain grey, or a grey ramp of peak-to-peak ``gradient_contrast``."""
    if config.background == "plain":
        return torch.full((n, 3, 32, 32), BACKGROUND)
    angle = torch.from_numpy(rng.uniform(0, 2 * np.pi, n)).float()
    u = (torch.arange(32) - 15.5) / 31  # in [-0.5, 0.5]
    ramp = torch.cos(angle)[:, None, None] * u[None, None, :] + torch.sin(angle)[:, None, None] * u[None, :, None]
    ramp = ramp / ramp.flatten(1).abs().amax(1)[:, None, None] / 2  # peak-to-peak exactly 1
    return (BACKGROUND + config.gradient_contrast * ramp)[:, None].expand(n, 3, 32, 32).contiguous()
