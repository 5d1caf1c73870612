import pytest
import torch

from lib.data.digits import load_digits


def test_digits_splits_are_fixed_disjoint_and_scaled():
    train, test = load_digits("train"), load_digits("test")
    assert len(train) == 1347 and len(test) == 450 and len(load_digits("all")) == 1797
    assert train.x.shape == (1347, 1, 8, 8) and train.x.dtype == torch.float32
    assert float(train.x.min()) == -1.0 and float(train.x.max()) == 1.0
    assert set(test.y.tolist()) == set(range(10))
    # the split is deterministic
    assert torch.equal(load_digits("test").y, test.y)
    flat = {tuple(r) for r in train.x.flatten(1).tolist()}
    overlap = sum(tuple(r) in flat for r in test.x.flatten(1).tolist())
    assert overlap < 5  # a few duplicate images exist in the raw data


def test_batches_cover_epoch():
    d = load_digits("test")
    seen = torch.cat([y for _, y in d.batches(64, torch.Generator().manual_seed(0))])
    assert seen.shape == (450,) and torch.equal(seen.sort().values, d.y.sort().values)
    with pytest.raises(ValueError, match="batch_size"):
        next(d.batches(0))


def test_bad_split():
    with pytest.raises(ValueError, match="split"):
        load_digits("val")
