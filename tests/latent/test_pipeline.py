"""Text-to-image pipeline: determinism under a fixed generator, CFG and negative captions as defined, SDEdit's
truncated grid, the step-cost timing, errors. Tiny untrained autoencoder / text tower (no checkpoint needed)."""

import pytest
import torch

from lib.data.shapes import make_shapes
from lib.diffusion.discrete import sd_time_grid
from lib.latent.autoencoder import AutoencoderConfig, KLAutoencoder
from lib.latent.clip import CLIP, CLIPConfig, TrainedCLIP
from lib.latent.pipeline import LatentDenoiser, LDMConfig, TextToImage, step_cost
from lib.latent.tokenizer import Tokenizer

TINY = dict(base_channels=8, time_dim=16, context_dim=16)


def _ae():
    torch.manual_seed(0)
    return KLAutoencoder(AutoencoderConfig(channels=(16, 16))).eval()


def _clip():
    tok = Tokenizer()
    cfg = CLIPConfig(d_model=16, n_layers=1, n_heads=2, embed_dim=8, image_channels=(8, 8))
    torch.manual_seed(1)
    return TrainedCLIP(CLIP(len(tok), cfg).eval(), tok, cfg)


def _pipe(conditioning="grouped"):
    torch.manual_seed(2)
    den = LatentDenoiser(LDMConfig(conditioning=conditioning, **TINY))
    torch.nn.init.normal_(den.unet.out[-1].weight, std=0.1)  # the zero-initialised read-out would make eps = 0
    return TextToImage(den, _ae(), _clip() if conditioning != "grouped" else None)


DATA = make_shapes(4, seed=0, split="test")


@pytest.mark.parametrize("conditioning", ["grouped", "clip"])
def test_generation_is_deterministic_under_a_generator(conditioning):
    pipe = _pipe(conditioning)
    kw = dict(captions=DATA.captions, labels=DATA.labels, w=2.0, steps=4)
    a = pipe.generate(**kw, generator=torch.Generator().manual_seed(5))
    b = pipe.generate(**kw, generator=torch.Generator().manual_seed(5))
    c = pipe.generate(**kw, generator=torch.Generator().manual_seed(6))
    assert a.images.shape == (4, 3, 32, 32) and a.latents.shape == (4, 4, 8, 8) and a.nfe == 4
    assert torch.equal(a.images, b.images) and torch.equal(a.latents, b.latents)
    assert not torch.allclose(a.latents, c.latents)
    assert float(a.images.abs().max()) <= 1.0
    s = pipe.generate(**kw, eta=1.0, generator=torch.Generator().manual_seed(5))  # stochastic DDIM: same rule
    assert torch.equal(s.latents, pipe.generate(**kw, eta=1.0, generator=torch.Generator().manual_seed(5)).latents)
    assert not torch.allclose(s.latents, a.latents)


def test_guidance_and_negative_captions_combine_as_defined():
    """Ho-Salimans w on the eps of [caption, null]; a negative caption replaces the null half."""
    pipe = _pipe("clip")
    unet = pipe.denoiser.unet
    ctx, mask = pipe.context(DATA.captions)
    nctx, nmask = pipe.context(["a large red square in the top left"] * 4)
    x, t = torch.randn(4, 4, 8, 8), torch.full((4,), 0.5)
    null = unet.null_condition({"context": ctx, "context_mask": mask}, {"context": torch.ones(4, dtype=torch.bool)})
    e_c, e_0 = unet(x, t, context=ctx, context_mask=mask), unet(x, t, **null)
    with torch.no_grad():
        w = 3.0
        got = pipe._denoiser(ctx, mask, w, None)(x, t)
        assert torch.allclose(got, (1 + w) * e_c - w * e_0, atol=1e-5)
        assert torch.allclose(pipe._denoiser(ctx, mask, 0.0, None)(x, t), e_c, atol=1e-6)  # w = 0: one pass
        e_n = unet(x, t, context=nctx, context_mask=nmask)
        got = pipe._denoiser(ctx, mask, w, (nctx, nmask))(x, t)  # contexts of different lengths are padded
        assert torch.allclose(got, e_n + (1 + w) * (e_c - e_n), atol=1e-5)
    out = pipe.generate(DATA.captions, w=w, steps=3, negative_captions=["a large red square in the top left"] * 4,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    plain = pipe.generate(DATA.captions, w=w, steps=3, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(out.latents, plain.latents)


def test_img2img_runs_the_tail_of_the_grid():
    pipe = _pipe("grouped")
    steps, strength = 10, 0.55
    kept = int((sd_time_grid(steps) <= strength).sum()) - 1  # steps from t_0 <= strength down to 1/N
    g = lambda: torch.Generator().manual_seed(3)
    a = pipe.img2img(DATA.images, labels=DATA.labels, strength=strength, steps=steps, generator=g())
    b = pipe.img2img(DATA.images, labels=DATA.labels, strength=strength, steps=steps, generator=g())
    assert a.nfe == kept == 6 and torch.equal(a.images, b.images)
    full = pipe.img2img(DATA.images, labels=DATA.labels, strength=1.0, steps=steps, generator=g())
    assert full.nfe == steps


def test_step_cost_times_both_and_pixel_is_dearer():
    r = step_cost(LDMConfig(**TINY), batch=4, repeat=3)
    assert r["latent_ms"] > 0 and r["pixel_ms"] > r["latent_ms"]
    assert r["ratio"] == pytest.approx(r["pixel_ms"] / r["latent_ms"])


def test_errors():
    pipe = _pipe("grouped")
    with pytest.raises(ValueError, match="labels"):
        pipe.generate(captions=DATA.captions)
    with pytest.raises(ValueError, match="w must be"):
        pipe.generate(labels=DATA.labels, w=-1.0)
    with pytest.raises(ValueError, match="strength"):
        pipe.img2img(DATA.images, labels=DATA.labels, strength=0.0)
    with pytest.raises(ValueError, match="strength"):
        pipe.img2img(DATA.images, labels=DATA.labels, strength=1e-4, steps=10)
    with pytest.raises(ValueError, match="images"):
        pipe.img2img(DATA.images[:2], labels=DATA.labels)
    with pytest.raises(ValueError, match="captions"):
        _pipe("clip").generate(labels=DATA.labels)
    with pytest.raises(ValueError, match="one negative per prompt"):
        _pipe("clip").generate(DATA.captions, negative_captions=["a red circle in the top left"])
    with pytest.raises(ValueError, match="needs clip"):
        TextToImage(LatentDenoiser(LDMConfig(conditioning="clip", **TINY)), _ae())
    with pytest.raises(ValueError, match="context_dim"):
        TextToImage(LatentDenoiser(LDMConfig(conditioning="clip", base_channels=8, context_dim=32)), _ae(), _clip())
    with pytest.raises(TypeError, match="LatentDenoiser"):
        TextToImage(torch.nn.Linear(2, 2), _ae())
    with pytest.raises(ValueError, match="conditioning"):
        LDMConfig(conditioning="words")


def _naive_cross_attention(blk, x, ctx, mask):
    """softmax(q k^T / sqrt(d)) of ``blk``'s cross-attention, from its input ``x (B, c, H, W)``, by einsum."""
    B, c, H, W = x.shape
    d = c // blk.heads
    heads = lambda a: a.reshape(B, a.shape[1], blk.heads, d).transpose(1, 2)  # (B, heads, n, d)
    h = blk.norm(x).reshape(B, c, H * W).transpose(1, 2)
    q, k, v = (heads(a) for a in blk.qkv(h).chunk(3, dim=-1))
    a = torch.softmax(torch.einsum("bhqd,bhkd->bhqk", q, k) / d**0.5, -1) @ v
    h = x.reshape(B, c, H * W).transpose(1, 2) + blk.proj(a.transpose(1, 2).reshape(B, H * W, c))
    q, k = heads(blk.q(blk.norm_x(h))), heads(blk.kv(ctx).chunk(2, dim=-1)[0])
    logits = torch.einsum("bhqd,bhkd->bhqk", q, k) / d**0.5
    p = torch.softmax(logits.masked_fill(~mask[:, None, None, :], float("-inf")), -1).mean(1)  # (B, HW, L)
    return p.transpose(1, 2).reshape(B, -1, H, W)


def test_cross_attention_maps_against_a_naive_einsum():
    """The hooked maps equal softmax(q k^T / sqrt(d)) recomputed by einsum from each block's input, averaged per
    resolution; every position's weights sum to 1 over the tokens and padding gets none."""
    from lib.latent.pipeline import cross_attention_maps
    from lib.nn.unet import AttentionBlock

    pipe = _pipe("clip")
    z = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    maps = cross_attention_maps(pipe, z, 0.5, captions=DATA.captions)
    ctx, mask = pipe.context(DATA.captions)
    assert set(maps) == {8, 4} and maps[8].shape == (4, ctx.shape[1], 8, 8) and maps[4].shape[2:] == (4, 4)
    assert torch.allclose(maps[8].sum(1), torch.ones(4, 8, 8), atol=1e-5)
    assert float(maps[8].masked_select(~mask[:, :, None, None]).abs().max()) == 0.0
    naive, hooks = {}, []
    for blk in pipe.denoiser.unet.modules():
        if isinstance(blk, AttentionBlock):
            f = lambda m, a: naive.setdefault(a[0].shape[-1], []).append(_naive_cross_attention(m, a[0], ctx, mask))
            hooks.append(blk.register_forward_pre_hook(f))
    with torch.no_grad():
        pipe.denoiser(z, torch.full((4,), 0.5), context=ctx, context_mask=mask)
    for h in hooks:
        h.remove()
    assert len(naive[8]) >= 2 and len(naive[4]) >= 2
    for side, ms in naive.items():
        assert torch.allclose(maps[side], torch.stack(ms).mean(0), atol=1e-5)
    with pytest.raises(ValueError, match="z must be"):
        cross_attention_maps(pipe, z[:2], 0.5, captions=DATA.captions)
