"""Grouped tokens carry exactly a caption's content (relations true of the cells); the text tower is frozen."""

import pytest
import torch

from lib.data.shapes import RELATIONS, make_shapes, relation
from lib.latent.clip import CLIP, CLIPConfig, TrainedCLIP
from lib.latent.conditioning import ClipConditioner, GroupedConditioner, grouped_features, pad_context
from lib.latent.tokenizer import Tokenizer


def test_grouped_features_match_the_labels():
    b = make_shapes(200, seed=3)
    feats, mask = grouped_features(b.labels)
    assert feats.shape == (200, 5, 7) and mask.shape == (200, 5)
    k = b.n_objects
    assert torch.equal(mask[:, :3].sum(1), k) and torch.equal(mask[:, 3:].sum(1), (k - 1).clamp(min=0))
    for i in range(200):
        labs = b.labels[i]
        for j in range(int(k[i])):
            assert feats[i, j, 1:4].tolist() == labs[j, :3].tolist() and int(feats[i, j, 0]) == j
            if j + 1 < int(k[i]):
                assert RELATIONS[int(feats[i, 3 + j, 6])] == relation(labs[j], labs[j + 1])
        if int(k[i]) == 1:  # a lone object's caption names its cell; several objects' captions do not
            assert feats[i, 0, 4:6].tolist() == labs[0, 3:5].tolist()
        else:
            assert feats[i, 0, 4:6].tolist() == [3, 3]


def test_folded_relations_sit_on_the_objects():
    """grouped_full: object k's token carries its relations to k - 1 and to k + 1 (inverse words); no extra tokens."""
    b = make_shapes(200, seed=4)
    feats, mask = grouped_features(b.labels, fold_relations=True)
    assert feats.shape == (200, 3, 8) and torch.equal(mask.sum(1), b.n_objects)
    none = len(RELATIONS)
    for i in range(200):
        k, labs = int(b.n_objects[i]), b.labels[i]
        for j in range(3):
            nxt, prev = int(feats[i, j, 7]), int(feats[i, j, 6])
            assert nxt == (RELATIONS.index(relation(labs[j], labs[j + 1])) if j + 1 < k else none)
            assert prev == (RELATIONS.index(relation(labs[j], labs[j - 1])) if 0 < j < k else none)
    ctx, m = GroupedConditioner(16, fold_relations=True)(b.labels)
    assert ctx.shape == (200, 3, 16) and torch.equal(m, mask)


def test_grouped_conditioner_and_padding():
    b = make_shapes(8, seed=0)
    cond = GroupedConditioner(16)
    ctx, mask = cond(b.labels)
    assert ctx.shape == (8, 5, 16) and mask.dtype == torch.bool
    ctx.sum().backward()  # trained with the UNet
    assert all(t.weight.grad is not None for t in cond.tables)
    swapped = b.labels.clone()
    two = int(torch.nonzero(b.n_objects >= 2)[0])
    swapped[two, [0, 1], 1] = b.labels[two, [1, 0], 1]  # exchange two objects' colours: a different context
    assert not torch.allclose(cond(swapped)[0][two], ctx[two])
    p, pm = pad_context(ctx, mask, 9)
    assert p.shape == (8, 9, 16) and not pm[:, 5:].any() and torch.equal(p[:, :5], ctx)
    with pytest.raises(ValueError, match="length"):
        pad_context(ctx, mask, 3)
    with pytest.raises(ValueError, match="labels"):
        cond(b.labels.float())
    with pytest.raises(ValueError, match="at least one"):
        cond(torch.full((1, 3, 5), -1))
    with pytest.raises(ValueError, match=r"\(B, 3, 5\)"):
        cond(b.labels[:, :2])
    with pytest.raises(ValueError, match="positive"):
        GroupedConditioner(0)


def test_clip_conditioner_is_frozen():
    tok = Tokenizer()
    cfg = CLIPConfig(d_model=16, n_layers=1, n_heads=2, embed_dim=8, image_channels=(8, 8))
    c = ClipConditioner(TrainedCLIP(CLIP(len(tok), cfg), tok, cfg))
    ctx, mask = c(["a small red circle in the top left", "a big blue square left of a tiny red disc"])
    assert ctx.shape[0] == 2 and ctx.shape[2] == 16 and not ctx.requires_grad and mask[0].sum() < mask[1].sum()
    assert not any(p.requires_grad for p in c.clip.model.parameters())
    with pytest.raises(ValueError, match="list of strings"):
        c("a red circle")
    with pytest.raises(TypeError, match="TrainedCLIP"):
        ClipConditioner(object())
