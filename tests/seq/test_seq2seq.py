"""lib/seq/seq2seq.py: label smoothing vs torch, greedy decoding, RNN encoder-decoder (fused == our cells)."""

import pytest
import torch
import torch.nn.functional as F

from lib.data.sequences import EOS, PAD, SequenceTask, make_batch, sampler
from lib.seq.seq2seq import (
    RNNSeq2Seq,
    RNNSeq2SeqConfig,
    Seq2SeqLoss,
    accuracy_by_length,
    exact_match,
    greedy_decode,
    label_smoothed_cross_entropy,
)
from lib.train import train

TASK = SequenceTask("reverse", n_symbols=5, min_len=2, max_len=6)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothing_matches_torch(eps):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 9, generator=g, dtype=torch.float64)
    target = torch.randint(0, 9, (40,), generator=g)
    ours = label_smoothed_cross_entropy(logits, target, eps, ignore_index=PAD)
    ref = F.cross_entropy(logits, target, label_smoothing=eps, ignore_index=PAD)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)


def test_label_smoothing_minimiser_is_the_smoothed_target():
    # the loss is minimised by p = q: p_y = 1 - eps + eps/V, the others eps/V
    V, eps = 6, 0.2
    q = torch.full((V,), eps / V, dtype=torch.float64)
    q[2] += 1 - eps
    logits = q.log().clone().requires_grad_(True)
    loss = label_smoothed_cross_entropy(logits[None], torch.tensor([2]), eps, ignore_index=-1)
    (grad,) = torch.autograd.grad(loss, logits)
    assert float(grad.abs().max()) < 1e-12
    with pytest.raises(ValueError, match="epsilon"):
        label_smoothed_cross_entropy(logits[None], torch.tensor([2]), 1.0)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_fused_and_our_cells_give_the_same_model(cell):
    torch.manual_seed(0)
    fused = RNNSeq2Seq(RNNSeq2SeqConfig(TASK.vocab_size, cell, d_embed=8, hidden_size=12)).double()
    ours = RNNSeq2Seq(RNNSeq2SeqConfig(TASK.vocab_size, cell, d_embed=8, hidden_size=12, fused=False)).double()
    ours.load_state_dict(
        {k.replace("_l0", "").replace("coder.", "coder.cell."): v for k, v in fused.state_dict().items()}
    )
    b = make_batch(TASK, 5, torch.Generator().manual_seed(0))
    torch.testing.assert_close(fused(b.src, b.tgt_in), ours(b.src, b.tgt_in), atol=1e-10, rtol=0)


def test_greedy_decode_and_exact_match_with_an_oracle():
    class Oracle(torch.nn.Module):
        """Knows the answer: emits tgt_out one token at a time."""

        def __init__(self, answer):
            super().__init__()
            self.answer, self.w = answer, torch.nn.Parameter(torch.zeros(1))

        def encode(self, src):
            return None

        def decode(self, tgt_in, state):
            t = tgt_in.shape[1]
            out = self.answer[:, :t]
            return F.one_hot(out, TASK.vocab_size).float() + self.w

    b = make_batch(TASK, 8, torch.Generator().manual_seed(0))
    oracle = Oracle(b.tgt_out)
    pred = greedy_decode(oracle, b.src, TASK.seq_len)
    assert torch.equal(pred, b.tgt_out)
    assert bool(exact_match(oracle, b).all())
    wrong = b.tgt_out.clone()
    wrong[0, 0] = EOS  # stops too early
    assert exact_match(Oracle(wrong), b).tolist() == [False] + [True] * 7
    assert set(accuracy_by_length(oracle, b).values()) == {1.0}
    with pytest.raises(ValueError, match="steps"):
        greedy_decode(oracle, b.src, 0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rnn_smoke_training(cell):
    torch.manual_seed(0)
    model = RNNSeq2Seq(RNNSeq2SeqConfig(TASK.vocab_size, cell, d_embed=16, hidden_size=32))
    hist = train(model, Seq2SeqLoss(), sampler(TASK, 32, seed=0), 60, lr=3e-3, grad_clip=1.0)
    assert hist.metrics["loss"][-1] < 0.8 * hist.metrics["loss"][0]
    with pytest.raises(ValueError, match="cell"):
        RNNSeq2SeqConfig(10, "transformer")
