"""lib/seq/seq2seq.py: label smoothing vs torch, greedy and cached decoding, beam search, RNN encoder-decoder."""

import pytest
import torch
import torch.nn.functional as F

from lib.data.sequences import EOS, PAD, SequenceTask, make_batch, sampler
from lib.seq.bahdanau import AttentionRNNSeq2Seq, AttentionRNNSeq2SeqConfig
from lib.seq.seq2seq import (
    RNNSeq2Seq,
    RNNSeq2SeqConfig,
    Seq2SeqLoss,
    accuracy_by_length,
    beam_search,
    exact_match,
    greedy_decode,
    label_smoothed_cross_entropy,
    pad_after_eos,
)
from lib.seq.transformer import Transformer, TransformerConfig
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


def _beam_models():
    torch.manual_seed(0)
    V = TASK.vocab_size
    return {
        "transformer": Transformer(TransformerConfig(V, d_model=16, n_heads=2, d_ff=16)).double(),
        "lstm": RNNSeq2Seq(RNNSeq2SeqConfig(V, "lstm", d_embed=8, hidden_size=8)).double(),
        "gru-ours": RNNSeq2Seq(RNNSeq2SeqConfig(V, "gru", d_embed=8, hidden_size=8, fused=False)).double(),
        "lstm-attention": AttentionRNNSeq2Seq(AttentionRNNSeq2SeqConfig(V, d_embed=8, hidden_size=8)).double(),
    }


def _sequence_log_prob(model, src, tokens):
    """Teacher-forced log-probability of ``tokens`` (B, n), summed up to and including the first EOS."""
    tgt_in = torch.cat([torch.full_like(tokens[:, :1], 1), tokens[:, :-1]], dim=1)  # BOS y_1 .. y_{n-1}
    log_p = torch.log_softmax(model(src, tgt_in), -1).gather(2, tokens[..., None]).squeeze(-1)  # (B, n)
    is_eos = (tokens == EOS).long()
    alive = (is_eos.cumsum(1) - is_eos) == 0  # up to and including the first EOS
    return (log_p * alive).sum(1)


@pytest.mark.parametrize("name", ["transformer", "lstm", "gru-ours", "lstm-attention"])
def test_beam_search_is_greedy_at_width_one_and_exact_when_wide(name):
    model = _beam_models()[name].eval()
    b = make_batch(TASK, 3, torch.Generator().manual_seed(5))
    assert torch.equal(beam_search(model, b.src, 5, beam_size=1).tokens, greedy_decode(model, b.src, 5))
    # exhaustive: every output of 3 tokens (canonical: PAD after the first EOS), best by log-probability
    V, n = TASK.vocab_size, 3
    grid = torch.cartesian_prod(*[torch.arange(V)] * n)  # (V^3, 3)
    grid = torch.unique(pad_after_eos(grid), dim=0)
    with torch.no_grad():
        for i in range(3):
            lp = _sequence_log_prob(model, b.src[i : i + 1].expand(len(grid), -1), grid)
            res = beam_search(model, b.src[i : i + 1], n, beam_size=V ** (n - 1))
            assert torch.equal(res.tokens[0], grid[lp.argmax()])
            torch.testing.assert_close(res.log_prob[0].double(), lp.max(), atol=1e-5, rtol=0)
            wide, narrow = res.log_prob[0], beam_search(model, b.src[i : i + 1], n, beam_size=2).log_prob[0]
            assert wide >= narrow - 1e-6


def test_beam_search_errors():
    model = _beam_models()["lstm"]
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, torch.zeros(1, 3, dtype=torch.long), 3, beam_size=0)
    with pytest.raises(TypeError, match="reorder_cache"):
        beam_search(torch.nn.Linear(2, 2), torch.zeros(1, 3, dtype=torch.long), 3)
