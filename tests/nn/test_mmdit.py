"""lib/nn/mmdit.py: patchify round trip, 2D sin-cos positions against diffusers (test-only oracle), adaLN-Zero
identity at initialisation, joint attention against a naive einsum, QK-norm scale invariance, conditioning."""

import math

import pytest
import torch
from diffusers.models.embeddings import PatchEmbed, get_2d_sincos_pos_embed

from lib.nn.mmdit import (
    JointBlock,
    MMDiT,
    MMDiTConfig,
    crop_pos_embed,
    joint_attention,
    patchify,
    pos_embed_2d,
    unpatchify,
)

CFG = MMDiTConfig(in_channels=4, input_size=8, patch_size=2, d_model=32, depth=2, heads=4, context_dim=12, pooled_dim=6)


def _randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give the zero-initialised parameters (adaLN, final layer, null tokens) random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not p.abs().sum():
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return module


def _inputs(B=3, L=5, seed=1, cfg=CFG, H=8, W=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, cfg.in_channels, H, W, generator=g)
    t = torch.rand(B, generator=g)
    ctx = torch.randn(B, L, cfg.context_dim, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 3:] = False
    pooled = torch.randn(B, cfg.pooled_dim, generator=g)
    return x, t, ctx, mask, pooled


@pytest.mark.parametrize("shape,p", [((2, 4, 8, 8), 2), ((1, 3, 6, 10), 2), ((2, 1, 9, 6), 3), ((1, 2, 4, 4), 1)])
def test_patchify_round_trip_and_layout(shape, p):
    x = torch.randn(shape)
    B, C, H, W = shape
    tok = patchify(x, p)
    assert tok.shape == (B, (H // p) * (W // p), p * p * C)
    assert torch.equal(unpatchify(tok, p, H // p, W // p), x)
    # token i*w + j holds patch (i, j), flattened as (row in patch, column in patch, channel)
    i, j, w = H // p - 1, 0, W // p
    assert torch.equal(
        tok[:, i * w + j], x[:, :, i * p : (i + 1) * p, j * p : (j + 1) * p].permute(0, 2, 3, 1).flatten(1)
    )


def test_patchify_errors():
    with pytest.raises(ValueError, match="p must"):
        patchify(torch.randn(1, 4, 8, 8), 3)
    with pytest.raises(ValueError, match="x must"):
        patchify(torch.randn(4, 8, 8), 2)
    with pytest.raises(ValueError, match="tokens must"):
        unpatchify(torch.randn(1, 15, 16), 2, 4, 4)


@pytest.mark.parametrize("grid,base,scale", [((4, 4), 4, 1.0), ((3, 5), 16, 1.0), ((6, 2), 4, 2.0), ((8, 8), 4, 1.0)])
def test_pos_embed_matches_diffusers(grid, base, scale):
    ref = get_2d_sincos_pos_embed(24, grid, base_size=base, interpolation_scale=scale, output_type="pt")
    ours = pos_embed_2d(grid[0], grid[1], 24, base, scale)
    assert ours.shape == (grid[0] * grid[1], 24)
    torch.testing.assert_close(ours, ref.float(), atol=1e-6, rtol=0)
    # base_size = grid side: integer positions, the same code as the interleaved lib.nn.positional.sincos_2d
    # up to a permutation of channels
    if grid[0] == grid[1] == base and scale == 1.0:
        from lib.nn.positional import sincos_2d

        ours_sorted = ours.double().sort(dim=1).values
        torch.testing.assert_close(ours_sorted, sincos_2d(*grid, 24).double().sort(dim=1).values, atol=1e-6, rtol=0)


@pytest.mark.parametrize("hw", [(4, 4), (3, 5), (6, 6), (1, 2)])
def test_crop_matches_sd3_patch_embed(hw):
    p, M, d = 2, 6, 16
    ref = PatchEmbed(height=8, width=8, patch_size=p, in_channels=4, embed_dim=d, pos_embed_max_size=M)
    ours = crop_pos_embed(pos_embed_2d(M, M, d, base_size=8 // p), *hw)
    torch.testing.assert_close(ours, ref.cropped_pos_embed(hw[0] * p, hw[1] * p)[0], atol=1e-6, rtol=0)
    # the whole patch embedding: our linear on patchify == diffusers' stride-p convolution, plus the cropped code
    model = MMDiT(MMDiTConfig(in_channels=4, input_size=8, patch_size=p, d_model=d, depth=1, heads=2, pos_max_size=M))
    with torch.no_grad():
        model.x_embed.weight.copy_(ref.proj.weight.permute(0, 2, 3, 1).reshape(d, -1))  # (d, C, p, p) -> (d, p p C)
        model.x_embed.bias.copy_(ref.proj.bias)
    x = torch.randn(2, 4, hw[0] * p, hw[1] * p)
    ours = model.x_embed(patchify(x, p)) + model.positions(*hw)
    torch.testing.assert_close(ours, ref(x), atol=1e-5, rtol=1e-5)


def test_grid_larger_than_table_raises_unless_interpolating():
    cfg = MMDiTConfig(input_size=8, patch_size=2, d_model=16, depth=1, heads=2)
    with pytest.raises(ValueError, match="exceeds the 4x4 positional table"):
        MMDiT(cfg)(torch.randn(1, 4, 12, 8), torch.rand(1))
    with pytest.raises(ValueError, match="exceeds"):
        crop_pos_embed(pos_embed_2d(4, 4, 16), 5, 1)
    model = MMDiT(MMDiTConfig(input_size=8, patch_size=2, d_model=16, depth=1, heads=2, pos_interpolate=True))
    assert model(torch.randn(1, 4, 12, 8), torch.rand(1)).shape == (1, 4, 12, 8)
    # interpolation: the 6x4 grid's positions fill the training range [0, 4), as diffusers' PatchEmbed does
    ref = get_2d_sincos_pos_embed(16, (6, 4), base_size=4, interpolation_scale=1.0, output_type="pt")
    torch.testing.assert_close(model.positions(6, 4), ref.float(), atol=1e-6, rtol=0)
    # a smaller grid is a crop, never an interpolation
    torch.testing.assert_close(model.positions(2, 2), crop_pos_embed(model.pos_table, 2, 2))


def test_adaln_zero_blocks_are_the_identity_at_init():
    torch.manual_seed(0)
    model = MMDiT(CFG)
    x, t, ctx, mask, pooled = _inputs()
    c = torch.randn(3, CFG.d_model)
    tokens, text = torch.randn(3, 16, CFG.d_model), torch.randn(3, 5, CFG.d_model)
    for i, blk in enumerate(model.blocks):
        out_x, out_c = blk(tokens, c, text)
        assert torch.equal(out_x, tokens)
        assert torch.equal(out_c, text) if i < CFG.depth - 1 else out_c is None  # the last text stream is pre-only
    assert torch.equal(model(x, t, context=ctx, context_mask=mask, pooled=pooled), torch.zeros_like(x))
    # and not the identity once the gates are non-zero (the check can fail)
    blk = _randomize(JointBlock(CFG.d_model, 4))
    assert not torch.allclose(blk(tokens, c, text)[0], tokens)


def test_joint_attention_equals_naive_einsum_over_the_concatenation():
    g = torch.Generator().manual_seed(3)
    B, heads, L, N, dh = 2, 3, 4, 7, 5
    q = [torch.randn(B, heads, n, dh, generator=g, dtype=torch.float64) for n in (L, N)]
    k = [torch.randn(B, heads, n, dh, generator=g, dtype=torch.float64) for n in (L, N)]
    v = [torch.randn(B, heads, n, dh, generator=g, dtype=torch.float64) for n in (L, N)]
    key_mask = torch.ones(B, L + N, dtype=torch.bool)
    key_mask[1, 2:L] = False  # padding text tokens of the second caption
    out_c, out_x = joint_attention(q, k, v, key_mask)
    Q, K, V = (torch.cat(z, dim=2) for z in (q, k, v))
    logits = torch.einsum("bhid,bhjd->bhij", Q, K) / math.sqrt(dh)
    logits = logits.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    ref = torch.einsum("bhij,bhjd->bhid", logits.softmax(-1), V)
    torch.testing.assert_close(torch.cat([out_c, out_x], dim=2), ref)
    assert out_c.shape == (B, heads, L, dh) and out_x.shape == (B, heads, N, dh)
    # joint, not two separate attentions: the image outputs depend on the text keys
    sep = torch.einsum(
        "bhij,bhjd->bhid", (torch.einsum("bhid,bhjd->bhij", q[1], k[1]) / math.sqrt(dh)).softmax(-1), v[1]
    )
    assert not torch.allclose(out_x, sep)


def test_qk_norm_is_invariant_to_a_scale_of_q_and_k():
    torch.manual_seed(0)
    x, c = torch.randn(2, 6, 32), torch.randn(2, 32)
    for qk_norm, invariant in ((True, True), (False, False)):
        blk = _randomize(JointBlock(32, 4, qk_norm=qk_norm, text=False))
        q0, k0, _, _ = blk.x_stream.pre(x, c)
        with torch.no_grad():
            blk.x_stream.qkv.weight[:64] *= 7.0  # W_q and W_k scaled by 7
            blk.x_stream.qkv.bias[:64] *= 7.0
        q1, k1, _, _ = blk.x_stream.pre(x, c)
        assert torch.allclose(q0, q1, atol=1e-4) == invariant and torch.allclose(k0, k1, atol=1e-4) == invariant
    # RMSNorm: every head's query has root-mean-square 1 (the learned gain starts at 1)
    q = JointBlock(32, 4, qk_norm=True).x_stream.pre(x, c)[0]
    torch.testing.assert_close(q.pow(2).mean(-1), torch.ones(2, 4, 6), atol=1e-4, rtol=0)


def test_record_max_logit():
    blk = _randomize(JointBlock(32, 4, text=False))
    x, c = torch.randn(2, 6, 32), torch.randn(2, 32)
    blk.record_logits = True
    blk(x, c)
    q, k, _, _ = blk.x_stream.pre(x, c)
    assert blk.max_logit == pytest.approx(float((q @ k.transpose(-2, -1)).amax().detach() / math.sqrt(8)), rel=1e-5)


def test_gradients_reach_the_zero_gates_after_one_step():
    torch.manual_seed(0)
    model = MMDiT(CFG)
    x, t, ctx, mask, pooled = _inputs()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gates = {f"x{i}": blk.x_stream.ada[1].weight for i, blk in enumerate(model.blocks)}
    gates |= {f"c{i}": blk.c_stream.ada[1].weight for i, blk in enumerate(model.blocks)}
    norms, dead = [], []
    for _ in range(4):
        opt.zero_grad()
        (model(x, t, context=ctx, context_mask=mask, pooled=pooled) - x).pow(2).mean().backward()
        norms.append({k: float(g.grad.norm()) for k, g in gates.items()})
        dead.append([n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()])
        opt.step()
    # step 0: the zero final layer blocks every gradient into the blocks; only the final layer moves
    assert all(n == 0 for n in norms[0].values()) and float(model.final.weight.detach().abs().sum()) > 0
    # step 1: the image-stream gates get gradients (text reaches the image only through attention, still gated)
    assert all(norms[1][f"x{i}"] > 0 for i in range(CFG.depth)) and norms[1]["c0"] == 0
    # step 2: every gate; step 3: every parameter but the null tokens (unused with a caption): no dead weights,
    # thanks to the pre-only text stream of the last block (its outputs would reach nothing)
    assert all(n > 0 for n in norms[2].values()) and dead[3] == ["null_context", "null_pooled"]


def test_conditioning_paths_and_context_mask():
    torch.manual_seed(0)
    model = _randomize(MMDiT(CFG))
    x, t, ctx, mask, pooled = _inputs()
    out = model(x, t, context=ctx, context_mask=mask, pooled=pooled)
    assert out.shape == x.shape
    # padding tokens are ignored: changing caption 0's padded tokens leaves its output unchanged
    ctx2 = ctx.clone()
    ctx2[0, 3:] += 5.0
    out2 = model(x, t, context=ctx2, context_mask=mask, pooled=pooled)
    torch.testing.assert_close(out2[0], out[0])
    assert not torch.allclose(model(x, t, context=ctx2, pooled=pooled)[0], out[0])  # without the mask they matter
    # text and pooled text both condition the output
    assert not torch.allclose(model(x, t, context=ctx.flip(0), context_mask=mask.flip(0), pooled=pooled), out)
    assert not torch.allclose(model(x, t, context=ctx, context_mask=mask, pooled=pooled.flip(0)), out)
    # null condition: dropped rows equal the unconditional call (no context, no pooled)
    drop = torch.tensor([True, False, True])
    cond = model.null_condition({"context": ctx, "context_mask": mask, "pooled": pooled}, {"context": drop})
    out_null = model(x, t, **cond)
    torch.testing.assert_close(out_null[drop], model(x[drop], t[drop]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_null[~drop], out[~drop])


def test_dit_without_text_and_with_labels():
    model = _randomize(
        MMDiT(MMDiTConfig(in_channels=1, input_size=8, patch_size=4, d_model=16, heads=2, num_classes=10))
    )
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 3, 9, 10])
    out = model(x, torch.rand(4), y=y)
    assert out.shape == x.shape
    cond = model.null_condition({"y": y}, {"y": torch.tensor([True, False, False, False])})
    assert cond["y"].tolist() == [10, 3, 9, 10]
    with pytest.raises(ValueError, match="no text stream"):
        model(x, torch.rand(4), context=torch.randn(4, 2, 3))


def test_bad_inputs():
    model = MMDiT(CFG)
    x, t, ctx, mask, pooled = _inputs()
    with pytest.raises(ValueError, match="x must"):
        model(torch.randn(3, 3, 8, 8), t)
    with pytest.raises(ValueError, match="divisible by 2"):
        model(torch.randn(3, 4, 7, 8), t)
    with pytest.raises(ValueError, match="context must"):
        model(x, t, context=torch.randn(3, 5, 11))
    with pytest.raises(ValueError, match="context_mask must"):
        model(x, t, context=ctx, context_mask=mask[:, :4])
    with pytest.raises(ValueError, match="pooled must"):
        model(x, t, context=ctx, pooled=pooled[:, :5])
    with pytest.raises(ValueError, match="patch_size"):
        MMDiTConfig(input_size=8, patch_size=3)
    with pytest.raises(ValueError, match="d_model"):
        MMDiTConfig(d_model=30, heads=4)
    with pytest.raises(ValueError, match="pooled_dim needs"):
        MMDiTConfig(pooled_dim=4)
    with pytest.raises(ValueError, match="pos_max_size"):
        MMDiTConfig(input_size=8, patch_size=2, pos_max_size=3)
    with pytest.raises(ValueError, match="d_model must be divisible by 4"):
        pos_embed_2d(2, 2, 18)
    with pytest.raises(ValueError, match="positive"):
        pos_embed_2d(2, 2, 16, interpolation_scale=0.0)
    with pytest.raises(ValueError, match="divisible by heads"):
        JointBlock(30, 4)
    with pytest.raises(ValueError, match="can drop"):
        model.null_condition({}, {"x": torch.tensor([True])})
