"""Classifier-free guidance: the two conventions agree (s = 1 + w), one batched forward, the same result in every
prediction space, the model's null condition, errors."""

import pytest
import torch

from lib.diffusion.guidance import combine, guidance_scale, guided_denoiser
from lib.diffusion.predictions import PREDICTIONS, convert
from lib.diffusion.schedules import VPSDE
from lib.nn.unet import UNet, UNetConfig
from lib.utils import seed_everything


def _net():
    seed_everything(0, threads=None)
    net = UNet(UNetConfig(base_channels=8, time_dim=16, num_classes=3, heads=2))
    for p in net.out[-1].parameters():
        torch.nn.init.normal_(p, std=0.1)
    calls = []
    fwd = net.forward

    def counted(*a, **k):
        calls.append(a[0].shape[0])
        return fwd(*a, **k)

    net.forward = counted
    return net, calls


def test_conventions_agree_and_one_forward():
    net, calls = _net()
    x, t, y = torch.randn(4, 1, 8, 8), torch.full((4,), 0.5), torch.tensor([0, 1, 2, 0])
    ho = guided_denoiser(net, "eps", w=2.0, y=y)(x, t)
    assert calls == [8]  # one forward on the doubled batch
    diffusers = guided_denoiser(net, "eps", scale=3.0, y=y)(x, t)
    assert torch.allclose(ho, diffusers, atol=1e-6)
    with torch.no_grad():
        e_c, e_u = net(x, t, y=y), net(x, t)  # y=None: the null label
    assert torch.allclose(ho, 3.0 * e_c - 2.0 * e_u, atol=1e-5)
    assert torch.allclose(guided_denoiser(net, "eps", w=0.0, y=y)(x, t), e_c, atol=1e-5)  # w = 0: conditional
    assert torch.allclose(guided_denoiser(net, "eps", scale=0.0, y=y)(x, t), e_u, atol=1e-5)  # s = 0: unconditional


def test_guidance_is_the_same_in_every_prediction_space():
    """Predictions are affine in each other at fixed (x_t, t), so (1+w) p_c - w p_u commutes with conversion."""
    sch, g = VPSDE(), torch.Generator().manual_seed(0)
    x, t = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.full((5,), 0.4, dtype=torch.float64)
    e_c, e_u = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    guided_eps = combine(e_c, e_u, w=1.5)
    for p in PREDICTIONS:
        c, u = (convert(e, x, t, sch, "eps", p) for e in (e_c, e_u))
        assert torch.allclose(convert(combine(c, u, w=1.5), x, t, sch, p, "eps"), guided_eps, atol=1e-9)


def test_errors():
    net, _ = _net()
    assert guidance_scale(w=2.0) == 3.0 and guidance_scale(scale=7.5) == 7.5
    with pytest.raises(ValueError, match="exactly one"):
        guidance_scale(w=1.0, scale=2.0)
    with pytest.raises(ValueError, match="exactly one"):
        guided_denoiser(net, y=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="condition"):
        guided_denoiser(net, w=1.0)
    with pytest.raises(TypeError, match="null_condition"):
        guided_denoiser(lambda x, t, y: x, w=1.0, y=torch.zeros(2))
    with pytest.raises(TypeError, match="w must be a real number"):
        guided_denoiser(net, w="abc", y=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="scale must be finite"):
        guidance_scale(scale=float("nan"))
    x, t = torch.randn(2, 1, 8, 8), torch.full((2,), 0.5)
    with pytest.raises(ValueError, match=r"y must hold labels in 0\.\.2"):
        guided_denoiser(net, w=1.0, y=torch.tensor([0, 4]))(x, t)  # 3 is the null label; 4 is no label


def test_guidance_with_text_context_and_mask():
    """A context-conditioned UNet with a padding mask: guidance's all-True drop covers every tensor key
    (context_mask included, which follows context), the null half is the learned null token, and one forward."""
    seed_everything(0, threads=None)
    net = UNet(UNetConfig(base_channels=8, time_dim=16, context_dim=6, heads=2))
    x, t = torch.randn(3, 1, 8, 8), torch.full((3,), 0.5)
    ctx, mask = torch.randn(3, 4, 6), torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        guided = guided_denoiser(net, w=2.0, context=ctx, context_mask=mask)(x, t)
        p_c = net(x, t, context=ctx, context_mask=mask)
        p_u = net(x, t)  # context=None: the learned null token
    assert torch.allclose(guided, combine(p_c, p_u, w=2.0), atol=1e-5)
