"""Time-conditioned UNet and MLP: shapes, conditioning hooks, gradients, errors."""

import pytest
import torch

from lib.nn.unet import MLPConfig, TimeMLP, UNet, UNetConfig, timestep_embedding
from lib.utils import seed_everything


def test_unet_shapes_and_conditioning():
    seed_everything(0, threads=None)
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    plain = UNet(UNetConfig(base_channels=16, time_dim=32))
    assert plain(x, t).shape == x.shape
    assert torch.equal(plain(x, t), torch.zeros_like(x))  # zero-initialised read-out
    cond = UNet(UNetConfig(in_channels=4, base_channels=16, time_dim=32, num_classes=10, context_dim=12,
                           channel_mults=(1, 2, 2)))  # fmt: skip
    for p in cond.out[-1].parameters():
        torch.nn.init.normal_(p)
    z, ctx = torch.randn(3, 4, 16, 16), torch.randn(3, 5, 12)
    y = torch.tensor([1, 2, 10])  # 10 = the null label
    out = cond(z, t, y=y, context=ctx)
    assert out.shape == z.shape
    assert not torch.allclose(out, cond(z, t, y=torch.tensor([3, 2, 10]), context=ctx))  # labels matter
    assert not torch.allclose(out, cond(z, t, y=y, context=ctx + 1))  # context matters
    assert torch.allclose(cond(z, t, context=ctx), cond(z, t, y=torch.full((3,), 10), context=ctx))  # y=None = null
    mask = torch.ones(3, 5, dtype=torch.bool)
    assert torch.allclose(cond(z, t, y=y, context=ctx, context_mask=mask), out, atol=1e-6)
    mask[:, 3:] = False  # masked tokens must not matter
    ctx2 = ctx.clone()
    ctx2[:, 3:] = 100.0
    assert torch.allclose(
        cond(z, t, y=y, context=ctx, context_mask=mask), cond(z, t, y=y, context=ctx2, context_mask=mask), atol=1e-5
    )
    # ControlNet hooks: zero residuals change nothing; encode/decode compose to forward; a residual does act
    h, hs, emb = cond.encode(z, t, y, ctx, input_residual=torch.zeros(3, 16, 16, 16))
    zeros = [torch.zeros_like(a) for a in hs]
    assert torch.allclose(
        cond.decode(h, hs, emb, ctx, down_residuals=zeros, mid_residual=torch.zeros_like(h)), out, atol=1e-6
    )
    h2, hs2, _ = cond.encode(z, t, y, ctx, input_residual=torch.randn(3, 16, 16, 16))
    assert not torch.allclose(h2, h) and not torch.allclose(hs2[-1], hs[-1])
    assert not torch.allclose(cond.decode(h, hs, emb, ctx, mid_residual=torch.randn_like(h)), out)
    out.sum().backward()
    assert all(p.grad is not None for n, p in cond.named_parameters() if n != "null_context")  # no row was null


def test_null_condition_and_null_context():
    seed_everything(1, threads=None)
    net = UNet(UNetConfig(base_channels=16, time_dim=32, num_classes=4, context_dim=6))
    for p in net.out[-1].parameters():
        torch.nn.init.normal_(p)
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    ctx = torch.randn(2, 3, 6)
    assert net(x, t).shape == x.shape  # no label, no context: the null condition, not a crash
    drop = {"y": torch.tensor([True, False]), "context": torch.tensor([True, False])}
    cond = net.null_condition({"y": torch.tensor([1, 2]), "context": ctx}, drop)
    assert cond["y"].tolist() == [4, 2] and torch.equal(cond["context"][1], ctx[1])
    assert torch.equal(cond["context"][0], net.null_context[0].expand(3, 6))
    with torch.no_grad():
        net.null_context.normal_()  # the null token is a learned parameter that reaches the output
    full = net.null_condition({"context": ctx}, {"context": torch.ones(2, dtype=torch.bool)})
    assert torch.allclose(net(x, t, context=full["context"]), net(x, t), atol=1e-5)  # None = the null token
    with pytest.raises(ValueError, match="drop"):
        net.null_condition({}, {"text": torch.ones(2, dtype=torch.bool)})
    mlp = TimeMLP(MLPConfig(dim=2, hidden=8, depth=1, time_dim=8, num_classes=3))
    assert mlp.null_condition({"y": torch.tensor([0, 1])}, {"y": torch.tensor([False, True])})["y"].tolist() == [0, 3]
    with pytest.raises(ValueError, match="num_classes"):
        TimeMLP(MLPConfig(dim=2, hidden=8, depth=1)).null_condition({}, {"y": torch.ones(2, dtype=torch.bool)})


def test_time_embedding_in_float32_under_bf16():
    """A bf16 model still embeds t in float32: bf16 rounds t = 0.999 to 1.0 (8 bits of mantissa)."""
    seed_everything(2, threads=None)
    net = UNet(UNetConfig(base_channels=16, time_dim=32))
    t = torch.tensor([0.999, 0.998])
    ref = net.embed(t)
    half = net.to(torch.bfloat16)
    emb = half.embed(t.to(torch.bfloat16))  # what a bf16 caller passes
    assert emb.dtype == torch.bfloat16
    assert not torch.allclose(emb[0].float(), emb[1].float())  # two distinct times stay distinct
    assert half(torch.randn(2, 1, 8, 8, dtype=torch.bfloat16), t).dtype == torch.bfloat16
    assert ref.shape == (2, 32)


def test_unet_errors():
    net = UNet(UNetConfig(base_channels=16, time_dim=32))
    with pytest.raises(ValueError, match="shape"):
        net(torch.randn(2, 3, 8, 8), torch.rand(2))
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(2, 1, 7, 7), torch.rand(2))
    with pytest.raises(ValueError, match="num_classes"):
        net(torch.randn(2, 1, 8, 8), torch.rand(2), y=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="base_channels"):
        UNetConfig(base_channels=0)
    with pytest.raises(ValueError, match="heads"):
        UNetConfig(base_channels=6, heads=4)
    with pytest.raises(ValueError, match="input_residual"):
        net.encode(torch.randn(2, 1, 8, 8), torch.rand(2), input_residual=torch.zeros(2, 3, 8, 8))


def test_time_mlp():
    seed_everything(0, threads=None)
    mlp = TimeMLP(MLPConfig(dim=2, hidden=32, depth=2, time_dim=16, num_classes=3))
    x = torch.randn(5, 2)
    assert mlp(x, torch.rand(5), y=torch.zeros(5, dtype=torch.long)).shape == (5, 2)
    assert mlp(x, 0.5).shape == (5, 2)  # scalar time broadcasts
    img = TimeMLP(MLPConfig(dim=64, hidden=32, depth=1, image_shape=(1, 8, 8)))
    assert img(torch.randn(4, 1, 8, 8), torch.rand(4)).shape == (4, 1, 8, 8)
    with pytest.raises(ValueError, match="shape"):
        img(torch.randn(4, 64), torch.rand(4))
    with pytest.raises(ValueError, match="image_shape"):
        MLPConfig(dim=10, image_shape=(1, 8, 8))
    e = timestep_embedding(torch.tensor([0.0, 0.5]), 8)
    assert e.shape == (2, 8) and torch.allclose(e[0, :4], torch.ones(4))
