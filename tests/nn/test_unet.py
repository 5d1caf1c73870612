"""Time-conditioned UNet and MLP: shapes, conditioning hooks, gradients, errors."""

import pytest
import torch

from lib.nn.unet import MLPConfig, TimeMLP, UNet, UNetConfig, timestep_embedding


def test_unet_shapes_and_conditioning():
    torch.manual_seed(0)
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
    # ControlNet hooks: zero residuals change nothing; encode/decode compose to forward
    h, hs, emb = cond.encode(z, t, y, ctx)
    zeros = [torch.zeros_like(a) for a in hs]
    assert torch.allclose(
        cond.decode(h, hs, emb, ctx, down_residuals=zeros, mid_residual=torch.zeros_like(h)), out, atol=1e-6
    )
    out.sum().backward()
    assert all(p.grad is not None for p in cond.parameters() if p.requires_grad)


def test_unet_errors():
    net = UNet(UNetConfig(base_channels=16, time_dim=32))
    with pytest.raises(ValueError, match="shape"):
        net(torch.randn(2, 3, 8, 8), torch.rand(2))
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(2, 1, 7, 7), torch.rand(2))
    with pytest.raises(ValueError, match="num_classes"):
        net(torch.randn(2, 1, 8, 8), torch.rand(2), y=torch.zeros(2, dtype=torch.long))
    ctx_net = UNet(UNetConfig(base_channels=16, time_dim=32, context_dim=4))
    with pytest.raises(ValueError, match="context"):
        ctx_net(torch.randn(2, 1, 8, 8), torch.rand(2))


def test_time_mlp():
    torch.manual_seed(0)
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
