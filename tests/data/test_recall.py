"""Selective copying and induction-heads generators (lib/data/recall.py)."""

import pytest
import torch

from lib.data.recall import induction_heads, selective_copying


def test_selective_copying_structure():
    g = torch.Generator().manual_seed(0)
    b = selective_copying(64, L=20, K=5, V=6, generator=g)
    assert b.x.shape == (64, 25) and b.targets.shape == (64, 5)
    ctx = b.x[:, :20]
    assert ((ctx > 0).sum(1) == 5).all() and (b.x[:, 20:] == 7).all()
    for row, tgt in zip(ctx, b.targets, strict=True):  # data tokens, in order of position
        assert torch.equal(row[row > 0], tgt)
    assert b.targets.min() >= 1 and b.targets.max() <= 6


def test_induction_heads_structure():
    b = induction_heads(128, L=16, V=5, generator=torch.Generator().manual_seed(1))
    assert b.x.shape == (128, 16) and b.targets.shape == (128, 1)
    assert (b.x[:, -1] == 6).all() and ((b.x[:, :-1] == 6).sum(1) == 1).all()
    p = (b.x[:, :-1] == 6).int().argmax(1)
    assert torch.equal(b.x[torch.arange(128), p + 1], b.targets[:, 0])


def test_generators_are_reproducible_and_validate():
    a = selective_copying(4, 10, 3, 4, torch.Generator().manual_seed(3))
    b = selective_copying(4, 10, 3, 4, torch.Generator().manual_seed(3))
    assert torch.equal(a.x, b.x)
    with pytest.raises(ValueError, match="L must be an int >= K"):
        selective_copying(2, 3, 5, 4)
    with pytest.raises(ValueError, match="V"):
        induction_heads(2, 8, 1)
    with pytest.raises(TypeError, match="generator"):
        induction_heads(2, 8, 4, generator=0)
