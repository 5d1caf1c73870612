"""Word-level tokenizer: round trip, padding and mask, clear errors on unknown words and bad arguments."""

import pytest
import torch

from lib.latent.tokenizer import Tokenizer, split_words

VOCAB = ("a", "blue", "circle", "left", "of", "red", "square")


def test_round_trip_and_layout():
    tok = Tokenizer(VOCAB)
    assert len(tok) == len(VOCAB) + 3 and tok.itos[:3] == ["<pad>", "<bos>", "<eos>"]
    caps = ["a red circle left of a blue square", "A blue square."]
    t = tok.encode(caps, max_len=12)
    assert t.ids.shape == t.mask.shape == (2, 12) and t.ids.dtype == torch.int64 and t.mask.dtype == torch.bool
    assert t.ids[0, 0] == tok.bos_id and t.ids[0, 9] == tok.eos_id and t.mask.sum(1).tolist() == [10, 5]
    assert (t.ids[~t.mask] == tok.pad_id).all()
    assert tok.decode(t.ids) == [" ".join(split_words(c)) for c in caps]
    assert tok.encode(caps).ids.shape == (2, 10)  # default L: the longest caption


def test_default_vocabulary_covers_captions():
    from lib.data.shapes import VOCABULARY, make_shapes

    tok = Tokenizer()
    assert tok.itos[3:] == list(VOCABULARY)
    data = make_shapes(50, seed=0, split="train")
    t = tok.encode(data.captions)
    assert tok.decode(t.ids) == [" ".join(split_words(c)) for c in data.captions]


def test_errors():
    tok = Tokenizer(VOCAB)
    with pytest.raises(ValueError, match="'triangle'"):
        tok.encode(["a red triangle"])
    with pytest.raises(ValueError, match="max_len"):
        tok.encode(["a red circle left of a blue square"], max_len=4)
    with pytest.raises(ValueError, match="texts"):
        tok.encode([])
    with pytest.raises(TypeError, match="text"):
        tok.encode([3])
    with pytest.raises(ValueError, match="ids"):
        tok.decode(torch.tensor([[1, 99]]))
    with pytest.raises(ValueError, match="duplicate"):
        Tokenizer(["a", "a"])
    with pytest.raises(ValueError, match="special"):
        Tokenizer(["<pad>"])
