"""lib/data/sequences.py: layout of the synthetic reversal/copy batches, seeding, held-out set."""

import pytest
import torch

from lib.data.sequences import BOS, EOS, PAD, SequenceTask, held_out, make_batch, sampler


def _check_example(task, b, i):
    n = int(b.lengths[i])
    T = task.seq_len
    src, ti, to = b.src[i].tolist(), b.tgt_in[i].tolist(), b.tgt_out[i].tolist()
    x = src[T - n :]
    assert src[: T - n - 1] == [PAD] * (T - n - 1) and src[T - n - 1] == BOS
    assert all(3 <= t < task.vocab_size for t in x)
    y = x[::-1] if task.kind == "reverse" else x
    assert to == y + [EOS] + [PAD] * (T - n - 1)
    assert ti == [BOS] + y + [PAD] * (T - n - 1)


@pytest.mark.parametrize("kind", ["reverse", "copy"])
def test_layout(kind):
    task = SequenceTask(kind, n_symbols=7, min_len=1, max_len=12)
    b = make_batch(task, 50, torch.Generator().manual_seed(0))
    assert b.src.shape == b.tgt_in.shape == b.tgt_out.shape == (50, 13)
    assert int(b.lengths.min()) >= 1 and int(b.lengths.max()) <= 12
    for i in range(50):
        _check_example(task, b, i)


def test_seeded_and_lengths_and_held_out():
    task = SequenceTask(min_len=20, max_len=24)
    a, b = sampler(task, 8, seed=3), sampler(task, 8, seed=3)
    assert torch.equal(a(0).src, b(0).src) and not torch.equal(a(0).src, a(1).src)
    test = held_out(task, 5, seed=123)
    assert len(test) == 25 and sorted(set(test.lengths.tolist())) == [20, 21, 22, 23, 24]
    # no held-out input occurs in a sample of 20k training inputs
    train = make_batch(task, 20000, torch.Generator().manual_seed(0))
    seen = {tuple(r) for r in train.src.tolist()}
    assert not any(tuple(r) in seen for r in test.src.tolist())


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        SequenceTask("sort")
    with pytest.raises(ValueError, match="min_len"):
        SequenceTask(min_len=5, max_len=4)
    with pytest.raises(ValueError, match="batch_size"):
        make_batch(SequenceTask(), 0, torch.Generator())
    with pytest.raises(TypeError, match="generator"):
        make_batch(SequenceTask(), 2, 0)
    with pytest.raises(ValueError, match="lengths"):
        make_batch(SequenceTask(max_len=5, min_len=1), 2, torch.Generator(), lengths=torch.tensor([3, 9]))


def test_right_padding_layout():
    task = SequenceTask("reverse", n_symbols=5, min_len=1, max_len=6, pad_source="right")
    b = make_batch(task, 20, torch.Generator().manual_seed(1))
    for i in range(20):
        n = int(b.lengths[i])
        src = b.src[i].tolist()
        assert src[n] == EOS and src[n + 1 :] == [PAD] * (task.seq_len - n - 1)
        assert b.tgt_out[i].tolist()[:n] == src[:n][::-1]
    with pytest.raises(ValueError, match="pad_source"):
        SequenceTask(pad_source="middle")
