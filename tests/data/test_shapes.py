import re

import numpy as np
import pytest
import torch
from scipy import ndimage

from lib.data.shapes import (
    BACKGROUND,
    COLOURS,
    HELD_OUT,
    PALETTE,
    RELATIONS,
    SHAPES,
    SIZE_PX,
    SIZES,
    VOCABULARY,
    ShapesConfig,
    caption,
    make_shapes,
    relation,
    relation_holds,
)

_HELD = {(SHAPES.index(s), COLOURS.index(c)) for s, c in HELD_OUT}


@pytest.fixture(scope="module")
def batch():
    return make_shapes(300, seed=1)


def test_shapes_dtypes_and_counts(batch):
    n, k = len(batch), 3
    assert batch.images.shape == (n, 3, 32, 32) and batch.images.dtype == torch.float32
    assert float(batch.images.min()) >= -1 and float(batch.images.max()) <= 1
    assert batch.labels.shape == (n, k, 5) and batch.labels.dtype == torch.int64
    assert batch.masks.shape == (n, k, 32, 32) and batch.masks.dtype == torch.bool
    assert batch.edges.shape == (n, 1, 32, 32) and set(batch.edges.unique().tolist()) <= {0.0, 1.0}
    assert len(batch.captions) == n and batch.n_objects.dtype == torch.int64
    present = batch.labels[..., 0] >= 0
    assert torch.equal(present.sum(1), batch.n_objects)
    assert torch.equal(present, torch.arange(k)[None] < batch.n_objects[:, None])  # present objects come first
    assert (batch.labels[~present] == -1).all() and not batch.masks[~present].any()
    assert set(batch.n_objects.tolist()) == {1, 2, 3}
    for cfg_k in (1, 2):
        one = make_shapes(20, seed=0, config=ShapesConfig(max_objects=cfg_k))
        assert one.labels.shape == (20, cfg_k, 5) and int(one.n_objects.max()) <= cfg_k
    assert set(make_shapes(20, seed=0, n_objects=2).n_objects.tolist()) == {2}


def test_deterministic_from_seed_and_split(batch):
    again = make_shapes(300, seed=1)
    assert torch.equal(again.images, batch.images) and torch.equal(again.labels, batch.labels)
    assert again.captions == batch.captions and torch.equal(again.masks, batch.masks)
    assert not torch.equal(make_shapes(300, seed=2).labels, batch.labels)
    assert not torch.equal(make_shapes(300, seed=1, split="test").labels, batch.labels)


def test_objects_distinct_and_cells_valid(batch):
    for lab, k in zip(batch.labels, batch.n_objects.tolist(), strict=True):
        lab = lab[:k]
        for col in range(3):  # distinct shapes, colours, cells
            vals = lab[:, col] if col < 2 else lab[:, 3] * 3 + lab[:, 4]
            assert len(set(vals.tolist())) == k
        assert ((lab[:, 3:] >= 0) & (lab[:, 3:] < 3)).all()


def test_masks_are_the_drawn_pixels(batch):
    bg = BACKGROUND * 2 - 1
    colours = PALETTE * 2 - 1
    for img, lab, masks, k in zip(batch.images, batch.labels, batch.masks, batch.n_objects.tolist(), strict=True):
        union = masks.any(0)
        assert int(masks.sum(0).max()) <= 1  # disjoint
        assert torch.allclose(img[:, ~union], torch.full_like(img[:, ~union], bg))  # background elsewhere
        for j in range(k):
            shape, colour, size, row, col = lab[j].tolist()
            drawn = (img - colours[colour][:, None, None]).abs().amax(0) < 1e-6  # pixels of this colour
            assert torch.equal(drawn, masks[j])
            ys, xs = torch.nonzero(masks[j], as_tuple=True)
            h, w = int(ys.max() - ys.min()) + 1, int(xs.max() - xs.min()) + 1
            assert h == w == SIZE_PX[size]
            cy, cx = (ys.max() + ys.min()) / 2, (xs.max() + xs.min()) / 2
            assert int(cy // (32 / 3)) == row and int(cx // (32 / 3)) == col
            if SHAPES[shape] == "square":
                assert int(masks[j].sum()) == SIZE_PX[size] ** 2
            if SHAPES[shape] == "triangle":  # one pixel at the apex, full width at the base
                assert int(masks[j][ys.min()].sum()) == 1 and int(masks[j][ys.max()].sum()) == SIZE_PX[size]
            if SHAPES[shape] == "cross":  # the centre row and column are full, the corners empty
                assert int(masks[j][int(cy)].sum()) == SIZE_PX[size] and not masks[j][ys.min(), xs.min()]
            if SHAPES[shape] == "circle":
                assert not masks[j][ys.min(), xs.min()] and bool(masks[j][int(cy), xs.min()])


def test_objects_never_touch(batch):
    """At least one background pixel between objects: 8-connected components are exactly the objects."""
    for masks, k in zip(batch.masks, batch.n_objects.tolist(), strict=True):
        comps, count = ndimage.label(masks.any(0).numpy(), structure=np.ones((3, 3)))
        assert count == k
        for j in range(k):
            assert len(set(comps[masks[j].numpy()].tolist())) == 1


def test_edges_are_mask_boundaries(batch):
    expect = np.zeros((len(batch), 1, 32, 32), dtype=bool)
    for i, masks in enumerate(batch.masks.numpy()):
        for m in masks:
            expect[i, 0] |= m & ~ndimage.binary_erosion(m, border_value=0)
    assert np.array_equal(batch.edges.numpy().astype(bool), expect)
    assert (batch.edges.bool() <= batch.masks.any(1, keepdim=True)).all()


def test_heldout_pairs_only_in_heldout():
    for split in ("train", "test", "heldout"):
        b = make_shapes(400, seed=5, split=split)
        has = [
            any((s, c) in _HELD for s, c, *_ in lab[:k].tolist()) for lab, k in zip(b.labels, b.n_objects, strict=True)
        ]
        assert all(has) if split == "heldout" else not any(has)
    one = make_shapes(100, seed=0, split="heldout", n_objects=1)
    assert all((lab[0, 0].item(), lab[0, 1].item()) in _HELD for lab in one.labels)


_SIZE_WORDS = {"small": 0, "little": 0, "tiny": 0, "large": 1, "big": 1}
_SHAPE_WORDS = {"circle": 0, "disc": 0, "square": 1, "triangle": 2, "cross": 3, "plus": 3}
_REL_WORDS = {"to the left of": "left of", "left of": "left of", "to the right of": "right of", "right of": "right of"}
_REL_WORDS |= {"above": "above", "over": "above", "below": "below", "under": "below"}
_S, _C, _Z = "|".join(_SHAPE_WORDS), "|".join(COLOURS), "|".join(_SIZE_WORDS)
_OBJ = re.compile(rf"\ba ({_Z}) ({_C}) ({_S})\b|\ba ({_C}) ({_S}) that is ({_Z})\b")


def _parse_objects(text):
    out = []
    for m in _OBJ.finditer(text):
        size, colour, shape = (m[1], m[2], m[3]) if m[1] else (m[6], m[4], m[5])
        out.append((_SHAPE_WORDS[shape], COLOURS.index(colour), _SIZE_WORDS[size]))
    return out


def test_captions_name_every_object_and_a_true_relation():
    b = make_shapes(600, seed=3)
    used = set()
    for text, lab, k in zip(b.captions, b.labels, b.n_objects.tolist(), strict=True):
        words = text.split()
        used |= set(words)
        assert set(words) <= set(VOCABULARY), text
        objs = {tuple(r[:3]) for r in lab[:k].tolist()}
        assert sorted(_parse_objects(text)) == sorted(objs), text
        cells = {r[1]: (r[3], r[4]) for r in lab[:k].tolist()}  # colour -> cell (colours are distinct)
        if k == 1:
            row, col = lab[0, 3:5].tolist()
            assert re.search(
                rf"\b(in|at) the {('top', 'middle', 'bottom')[row]} {('left', 'centre', 'right')[col]}\b", text
            )
            continue
        clauses = text.split(" and ")
        assert len(clauses) == k - 1
        for clause in clauses:  # "<a> <relation> <b>": the two colours in order, the relation between them
            found = sorted((clause.index(f" {c} "), COLOURS.index(c)) for c in COLOURS if f" {c} " in clause)
            assert len(found) == 2, clause
            (ia, a), (ib, bb) = found
            between = clause[ia:ib]
            rels = [w for w in sorted(_REL_WORDS, key=len, reverse=True) if f" {w} " in between]
            assert rels, clause
            assert relation_holds(_REL_WORDS[rels[0]], cells[a], cells[bb]), text
    assert used == set(VOCABULARY)  # no word in the vocabulary is never used


def test_relation_and_caption_functions():
    a, b, c = [0, 0, 0, 0, 0], [1, 1, 1, 0, 2], [2, 2, 0, 2, 0]
    assert relation(a, b) == "left of" and relation(b, a) == "right of"
    assert relation(a, c) == "above" and relation(c, a) == "below" and relation(c, b) == "left of"
    assert all(relation_holds(relation(x, y), x[3:], y[3:]) for x in (a, b, c) for y in (a, b, c) if x is not y)
    assert RELATIONS == ("left of", "right of", "above", "below")
    rng = np.random.default_rng(0)
    text = caption(torch.tensor([[2, 2, 1, 1, 1], [-1] * 5]), rng)  # a large blue triangle, middle centre
    assert "blue triangle" in text and "middle centre" in text and ("large" in text or "big" in text)
    with pytest.raises(ValueError, match="labels_a"):
        relation(a, a)
    with pytest.raises(ValueError, match="word"):
        relation_holds("near", (0, 0), (0, 1))
    with pytest.raises(TypeError, match="rng"):
        caption(torch.tensor([a]), 0)
    with pytest.raises(ValueError, match="labels_row"):
        caption(torch.full((2, 5), -1), rng)


def test_gradient_background_is_smooth_and_low_contrast():
    cfg = ShapesConfig(background="gradient", gradient_contrast=0.1)
    b = make_shapes(50, seed=0, config=cfg)
    plain = make_shapes(50, seed=0)
    assert torch.equal(b.masks, plain.masks) and b.captions == plain.captions
    for img, masks in zip(b.images, b.masks, strict=True):
        bg = img[:, ~masks.any(0)]
        assert float(bg.max() - bg.min()) <= 2 * 0.1 + 1e-5 and float(bg.max() - bg.min()) > 0.1
        assert torch.equal(bg[0], bg[1]) and torch.equal(bg[1], bg[2])  # grey
        full = img[0]
        assert float((full[:, 1:] - full[:, :-1]).abs()[~(masks.any(0)[:, 1:] | masks.any(0)[:, :-1])].max()) < 0.02


def test_subset_and_batches(batch):
    sub = batch[torch.tensor([3, 7])]
    assert len(sub) == 2 and sub.captions == [batch.captions[3], batch.captions[7]]
    assert torch.equal(sub.masks[1], batch.masks[7]) and torch.equal(batch[5].labels[0], batch.labels[5])
    assert len(batch[10:20]) == 10 and len(batch[np.int64(4)]) == 1 and len(batch[batch.n_objects == 1]) > 0
    seen = [c for part in batch.batches(64, torch.Generator().manual_seed(0)) for c in part.captions]
    assert sorted(seen) == sorted(batch.captions)
    with pytest.raises(ValueError, match="batch_size"):
        next(batch.batches(0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n=0, seed=0), "n must"),
        (dict(n=4, seed=-1), "seed"),
        (dict(n=4, seed=0, split="val"), "split"),
        (dict(n=4, seed=0, n_objects=4), "n_objects"),
        (dict(n=4, seed=0, n_objects=0), "n_objects"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_shapes(**kwargs)


def test_bad_config():
    for kwargs, match in [
        (dict(resolution=64), "resolution"),
        (dict(max_objects=4), "max_objects"),
        (dict(background="noise"), "background"),
        (dict(jitter=2), "jitter"),
        (dict(gradient_contrast=0.5), "gradient_contrast"),
    ]:
        with pytest.raises(ValueError, match=match):
            ShapesConfig(**kwargs)
    with pytest.raises(TypeError, match="config"):
        make_shapes(2, seed=0, config={"max_objects": 2})
    assert SIZES == ("small", "large")
