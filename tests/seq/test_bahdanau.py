"""lib/seq/bahdanau.py: additive attention from its equations, fused == our cells, cached == full decoding."""

import pytest
import torch

from lib.data.sequences import PAD, SequenceTask, held_out, make_batch, sampler
from lib.seq.bahdanau import AdditiveAttention, AttentionRNNSeq2Seq, AttentionRNNSeq2SeqConfig
from lib.seq.seq2seq import RNNSeq2Seq, RNNSeq2SeqConfig, Seq2SeqLoss, exact_match, greedy_decode, greedy_decode_cached
from lib.train import train

TASK = SequenceTask("reverse", n_symbols=5, min_len=2, max_len=6)


def test_additive_attention_equations_and_padding():
    torch.manual_seed(0)
    att = AdditiveAttention(5, 7, 4).double()
    s, h = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 6, 7, dtype=torch.float64)
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[1, :2] = True
    with torch.no_grad():
        c, alpha = att(s, h, pad)
    # e_j = v . tanh(W s + U h_j), written out with explicit loops
    e = torch.empty(3, 6, dtype=torch.float64)
    with torch.no_grad():
        for b, j in ((b, j) for b in range(3) for j in range(6)):
            e[b, j] = att.v.weight[0] @ torch.tanh(att.W.weight @ s[b] + att.U.weight @ h[b, j] + att.U.bias)
    e = e.masked_fill(pad, float("-inf"))
    torch.testing.assert_close(alpha, e.softmax(-1), atol=1e-12, rtol=0)
    torch.testing.assert_close(c, torch.einsum("bs,bsd->bd", alpha, h), atol=1e-12, rtol=0)
    assert float(alpha[1, :2].abs().max()) == 0.0
    with pytest.raises(ValueError, match="need s"):
        att(s[0], h)
    with pytest.raises(ValueError, match="d_attn"):
        AdditiveAttention(5, 7, 0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_fused_and_our_cells_give_the_same_model(cell):
    torch.manual_seed(1)
    kw = dict(d_embed=8, hidden_size=12, d_attn=6)
    fused = AttentionRNNSeq2Seq(AttentionRNNSeq2SeqConfig(TASK.vocab_size, cell, **kw)).double()
    ours = AttentionRNNSeq2Seq(AttentionRNNSeq2SeqConfig(TASK.vocab_size, cell, fused=False, **kw)).double()
    ours.load_state_dict(
        {k.replace("encoder.", "encoder.cell.").replace("_l0", ""): v for k, v in fused.state_dict().items()}
    )
    b = make_batch(TASK, 5, torch.Generator().manual_seed(0))
    torch.testing.assert_close(fused(b.src, b.tgt_in), ours(b.src, b.tgt_in), atol=1e-10, rtol=0)


def test_cached_decoding_and_attention_weights():
    torch.manual_seed(2)
    model = AttentionRNNSeq2Seq(AttentionRNNSeq2SeqConfig(TASK.vocab_size, d_embed=8, hidden_size=12)).double().eval()
    b = make_batch(TASK, 6, torch.Generator().manual_seed(1))
    state = model.encode(b.src)
    full = model.decode(b.tgt_in, state)
    cache = model.init_cache(state)
    steps = torch.cat([model.decode_step(b.tgt_in[:, t : t + 1], cache) for t in range(TASK.seq_len)], dim=1)
    torch.testing.assert_close(steps, full, atol=1e-12, rtol=0)
    assert torch.equal(greedy_decode_cached(model, b.src, 7), greedy_decode(model, b.src, 7))
    alpha = model.attention_weights(b.src, b.tgt_in)
    assert alpha.shape == (6, TASK.seq_len, TASK.seq_len)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(6, TASK.seq_len, dtype=torch.float64))
    assert float(alpha.masked_select((b.src == PAD)[:, None, :]).abs().max()) == 0.0


def test_rnn_baseline_cached_decoding_and_type_error():
    torch.manual_seed(3)
    model = RNNSeq2Seq(RNNSeq2SeqConfig(TASK.vocab_size, "lstm", d_embed=8, hidden_size=12)).double()
    b = make_batch(TASK, 6, torch.Generator().manual_seed(1))
    assert torch.equal(greedy_decode_cached(model, b.src, 7), greedy_decode(model, b.src, 7))
    with pytest.raises(TypeError, match="init_cache"):
        greedy_decode_cached(torch.nn.Linear(2, 2), b.src, 3)


def test_config_errors_and_smoke_training():
    with pytest.raises(ValueError, match="cell"):
        AttentionRNNSeq2SeqConfig(10, "transformer")
    with pytest.raises(ValueError, match="bad sizes"):
        AttentionRNNSeq2SeqConfig(10, d_attn=0)
    torch.manual_seed(0)
    model = AttentionRNNSeq2Seq(AttentionRNNSeq2SeqConfig(TASK.vocab_size, d_embed=16, hidden_size=32, d_attn=16))
    hist = train(model, Seq2SeqLoss(), sampler(TASK, 32, seed=0), 80, lr=3e-3, grad_clip=1.0)
    assert hist.metrics["loss"][-1] < 0.5 * hist.metrics["loss"][0]
    acc = float(exact_match(model, held_out(TASK, 10, seed=9)).float().mean())
    assert acc > 0.2, acc
