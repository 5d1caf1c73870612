"""lib/seq/transformer.py: shapes, causality, padding, LN variants, schedule, and a CPU smoke training run."""

import pytest
import torch

from lib.data.sequences import PAD, SequenceTask, held_out, make_batch, sampler
from lib.seq.seq2seq import Seq2SeqLoss, exact_match, greedy_decode
from lib.seq.transformer import (
    DecoderCache,
    Transformer,
    TransformerConfig,
    greedy_decode_cached,
    layer_gradient_norms,
    warmup_lr,
    warmup_scheduler,
)
from lib.train import train

TASK = SequenceTask("reverse", n_symbols=5, min_len=2, max_len=6)


def _batch(n=4, seed=0):
    return make_batch(TASK, n, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("norm_first", [True, False])
def test_shapes_and_decoder_causality(norm_first):
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(TASK.vocab_size, d_model=16, n_heads=2, d_ff=32, norm_first=norm_first))
    b = _batch()
    logits = model(b.src, b.tgt_in)
    assert logits.shape == (4, TASK.seq_len, TASK.vocab_size)
    # changing target token t changes no logit before t
    t = 3
    tgt2 = b.tgt_in.clone()
    tgt2[:, t] = (tgt2[:, t] + 1) % TASK.vocab_size
    logits2 = model(b.src, tgt2)
    torch.testing.assert_close(logits[:, :t], logits2[:, :t])
    assert not torch.allclose(logits[:, t:], logits2[:, t:])


def test_padding_keys_are_ignored():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(TASK.vocab_size, d_model=16, n_heads=2, d_ff=32))
    b = _batch()
    memory, pad = model.encode(b.src)
    with torch.no_grad():
        model.embed.weight[PAD].normal_()  # whatever PAD embeds to, real tokens do not see it
    memory2, _ = model.encode(b.src)
    torch.testing.assert_close(memory[~pad], memory2[~pad])
    cross = model.cross_attention(b.src, b.tgt_in)
    assert len(cross) == 2 and cross[0].shape == (4, 2, TASK.seq_len, TASK.seq_len)
    assert float(cross[0].masked_select(pad[:, None, None, :]).abs().max()) == 0.0


def test_greedy_decode_is_consistent_with_teacher_forcing():
    torch.manual_seed(1)
    model = Transformer(TransformerConfig(TASK.vocab_size, d_model=16, n_heads=2, d_ff=32)).eval()
    b = _batch(6)
    pred = greedy_decode(model, b.src, TASK.seq_len)
    ys = torch.cat([torch.ones(6, 1, dtype=torch.long), pred[:, :-1]], dim=1)
    with torch.no_grad():
        again = model(b.src, ys).argmax(-1)
    alive = torch.cat([torch.ones(6, 1, dtype=torch.bool), (pred != PAD)[:, :-1]], dim=1) & (pred != PAD)
    assert torch.equal(again[alive], pred[alive])


def test_warmup_schedule():
    d, w = 64, 100
    lrs = [warmup_lr(s, d, w) for s in range(1000)]
    peak = max(range(1000), key=lambda s: lrs[s])
    assert peak == w - 1 and abs(lrs[peak] - 1 / (d * w) ** 0.5) < 1e-12
    assert all(a < b for a, b in zip(lrs[: w - 1], lrs[1:w], strict=True))  # linear warm-up
    assert abs(lrs[4 * w - 1] / lrs[w - 1] - 0.5) < 1e-12  # 1/sqrt(step) decay afterwards
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters(), lr=123.0)
    sched = warmup_scheduler(opt, d, w, scale=2.0)
    assert abs(opt.param_groups[0]["lr"] - 2 * lrs[0]) < 1e-15
    opt.step()
    sched.step()
    assert abs(opt.param_groups[0]["lr"] - 2 * lrs[1]) < 1e-15
    with pytest.raises(ValueError, match="warmup"):
        warmup_lr(0, 64, 0)


def test_layer_gradient_norms_pre_and_post_ln():
    torch.manual_seed(0)
    b = _batch(8)
    for norm_first in (True, False):
        model = Transformer(
            TransformerConfig(
                TASK.vocab_size, d_model=16, n_heads=2, d_ff=32, n_encoder_layers=3, norm_first=norm_first
            )
        )
        norms = layer_gradient_norms(model, Seq2SeqLoss()(model, b)["loss"])
        assert len(norms["encoder"]) == 3 and len(norms["decoder"]) == 2
        assert all(n > 0 for n in norms["encoder"] + norms["decoder"])
        assert all(p.grad is None for p in model.parameters())
        w2 = layer_gradient_norms(model, Seq2SeqLoss()(model, b)["loss"], param="ff.3.weight")
        assert all(0 < x < y for x, y in zip(w2["decoder"], norms["decoder"], strict=True))  # one matrix < all
    with pytest.raises(ValueError, match="param"):
        layer_gradient_norms(model, Seq2SeqLoss()(model, b)["loss"], param="nope")


def test_config_errors():
    with pytest.raises(ValueError, match="divisible"):
        TransformerConfig(13, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="dropout"):
        TransformerConfig(13, dropout=1.0)
    model = Transformer(TransformerConfig(13, d_model=8, n_heads=2, d_ff=8))
    with pytest.raises(ValueError, match="int64"):
        model(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))


def test_smoke_training_learns_short_reversal():
    torch.manual_seed(0)
    task = SequenceTask("reverse", n_symbols=5, min_len=2, max_len=5)
    model = Transformer(
        TransformerConfig(task.vocab_size, d_model=32, n_heads=2, d_ff=64, n_encoder_layers=1, n_decoder_layers=1)
    )
    opt = torch.optim.Adam(model.parameters(), betas=(0.9, 0.98))
    hist = train(
        model,
        Seq2SeqLoss(label_smoothing=0.05),
        sampler(task, 32, seed=0),
        150,
        optimizer=opt,
        scheduler=warmup_scheduler(opt, 32, warmup=30, scale=0.5),
    )
    assert hist.metrics["loss"][-1] < 0.5 * hist.metrics["loss"][0]
    acc = float(exact_match(model, held_out(task, 20, seed=99)).float().mean())
    assert acc > 0.5, acc


def _copy_mha(ours, ref):
    ref.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
    ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
    ref.out_proj.load_state_dict(ours.out_proj.state_dict())


def _to_torch_transformer(model: Transformer) -> torch.nn.Transformer:
    """torch.nn.Transformer with our weights copied in (embeddings and output layer stay outside it)."""
    c = model.config
    ref = torch.nn.Transformer(
        c.d_model,
        c.n_heads,
        c.n_encoder_layers,
        c.n_decoder_layers,
        c.d_ff,
        dropout=0.0,
        batch_first=True,
        norm_first=c.norm_first,
    ).double()
    with torch.no_grad():
        for ours, theirs in zip(model.encoder, ref.encoder.layers, strict=True):
            _copy_mha(ours.self_attn, theirs.self_attn)
            theirs.linear1.load_state_dict(ours.ff[0].state_dict())
            theirs.linear2.load_state_dict(ours.ff[3].state_dict())
            theirs.norm1.load_state_dict(ours.res1.norm.state_dict())
            theirs.norm2.load_state_dict(ours.res2.norm.state_dict())
        for ours, theirs in zip(model.decoder, ref.decoder.layers, strict=True):
            _copy_mha(ours.self_attn, theirs.self_attn)
            _copy_mha(ours.cross_attn, theirs.multihead_attn)
            theirs.linear1.load_state_dict(ours.ff[0].state_dict())
            theirs.linear2.load_state_dict(ours.ff[3].state_dict())
            for k, res in enumerate((ours.res1, ours.res2, ours.res3), start=1):
                getattr(theirs, f"norm{k}").load_state_dict(res.norm.state_dict())
        if c.norm_first:  # pre-LN: one final LayerNorm on each side, in both
            ref.encoder.norm.load_state_dict(model.enc_norm.state_dict())
            ref.decoder.norm.load_state_dict(model.dec_norm.state_dict())
        else:  # the paper's post-LN has none; torch.nn.Transformer always adds them, so remove them
            ref.encoder.norm = ref.decoder.norm = None
    return ref


@pytest.mark.filterwarnings("ignore:enable_nested_tensor")
@pytest.mark.parametrize("norm_first", [True, False])
def test_whole_encoder_decoder_matches_torch_transformer(norm_first):
    torch.manual_seed(3)
    cfg = TransformerConfig(
        TASK.vocab_size, d_model=16, n_heads=4, d_ff=24, n_encoder_layers=2, n_decoder_layers=3, norm_first=norm_first
    )
    model = Transformer(cfg).double()
    ref = _to_torch_transformer(model)
    b = _batch(5, seed=4)
    pad = b.src == PAD
    T = b.tgt_in.shape[1]
    with torch.no_grad():
        theirs = model.out(
            ref(
                model._embed(b.src),
                model._embed(b.tgt_in),
                tgt_mask=torch.ones(T, T, dtype=torch.bool).triu(1),  # torch: True = may NOT attend
                src_key_padding_mask=pad,
                memory_key_padding_mask=pad,
            )
        )
        ours = model(b.src, b.tgt_in)
    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=0)


@pytest.mark.parametrize("norm_first", [True, False])
def test_cached_decoding_matches_full_decoding(norm_first):
    torch.manual_seed(5)
    model = (
        Transformer(
            TransformerConfig(
                TASK.vocab_size, d_model=16, n_heads=2, d_ff=32, n_decoder_layers=3, norm_first=norm_first
            )
        )
        .double()
        .eval()
    )
    b = _batch(6, seed=2)
    state = model.encode(b.src)
    full = model.decode(b.tgt_in, state)
    cache = model.init_cache(state)
    assert isinstance(cache, DecoderCache) and cache.length == 0
    steps = [model.decode_step(b.tgt_in[:, t : t + 1], cache) for t in range(b.tgt_in.shape[1])]
    assert cache.length == b.tgt_in.shape[1]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-12, rtol=0)
    # the greedy outputs agree token for token, on a trained-looking (random) model and on a float32 one
    torch.testing.assert_close(greedy_decode_cached(model, b.src, 9), greedy_decode(model, b.src, 9), atol=0, rtol=0)
    with pytest.raises(TypeError, match="DecoderCache"):
        model.decode_step(b.tgt_in[:, :1], {})
    with pytest.raises(ValueError, match="steps"):
        greedy_decode_cached(model, b.src, 0)


def test_weight_tying_shares_one_matrix():
    torch.manual_seed(6)
    kw = dict(d_model=16, n_heads=2, d_ff=32)
    untied = Transformer(TransformerConfig(TASK.vocab_size, **kw)).double()
    tied = Transformer(TransformerConfig(TASK.vocab_size, tie_embeddings=True, **kw)).double()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731 (parameters() lists a shared one once)
    assert count(untied) - count(tied) == TASK.vocab_size * 16
    assert tied.out.weight is tied.embed.weight
    # the shared matrix gets the sum of both uses' gradients: compare with an untied copy holding equal values
    tied.load_state_dict(untied.state_dict(), strict=False)
    with torch.no_grad():
        tied.embed.weight.copy_(untied.embed.weight)
        untied.out.weight.copy_(untied.embed.weight)
    b = _batch(4, seed=7)
    Seq2SeqLoss()(tied, b)["loss"].backward()
    Seq2SeqLoss()(untied, b)["loss"].backward()
    torch.testing.assert_close(tied.embed.weight.grad, untied.embed.weight.grad + untied.out.weight.grad)
