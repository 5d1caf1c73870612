"""ControlNet: bit-identical to the frozen UNet at initialisation for any condition; zero convolutions get a gradient
at step one while nothing reaches the trainable copy; the frozen UNet stays frozen; strengths and composition;
errors; the condition encoder against diffusers' ControlNetConditioningEmbedding (oracle). A small randomly
initialised UNet (no checkpoint needed)."""

import hashlib

import pytest
import torch

from lib.data.shapes import make_shapes
from lib.latent.controlnet import ControlledUNet, ControlNet, ControlNetConfig, ControlResiduals, condition_image
from lib.nn.unet import UNet, UNetConfig

CFG = UNetConfig(in_channels=4, base_channels=8, channel_mults=(1, 2), attention_levels=(1,), heads=2, time_dim=16,
                 context_dim=8)  # fmt: skip
SMALL = ControlNetConfig(hidden=(4, 8, 8))


def _unet(seed=0):
    torch.manual_seed(seed)
    unet = UNet(CFG)
    torch.nn.init.normal_(unet.out[-1].weight, std=0.1)  # the zero read-out would make every output 0
    torch.nn.init.normal_(unet.null_context, std=1.0)
    return unet


def _inputs(b=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x, t = torch.randn(b, 4, 8, 8, generator=g), torch.rand(b, generator=g)
    ctx, mask = torch.randn(b, 5, 8, generator=g), torch.rand(b, 5, generator=g) > 0.3
    mask[:, 0] = True
    return x, t, ctx, mask


def _hash(module):
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode() + v.numpy().tobytes())
    return h.hexdigest()


def test_from_unet_copies_the_encoder_and_drops_the_decoder():
    unet = _unet()
    net = ControlNet.from_unet(unet, SMALL)
    assert not hasattr(net.copy, "up") and not hasattr(net.copy, "out")
    for k, v in net.copy.state_dict().items():
        assert torch.equal(v, unet.state_dict()[k]), k
        assert v.data_ptr() != unet.state_dict()[k].data_ptr()  # a copy, not shared storage
    x, t, ctx, mask = _inputs()
    h, hs, _ = unet.encode(x, t, context=ctx, context_mask=mask)
    h2, hs2, _ = net.copy.encode(x, t, context=ctx, context_mask=mask)
    assert torch.equal(h, h2) and all(torch.equal(a, b) for a, b in zip(hs, hs2, strict=True))
    assert [z.in_channels for z in net.zero_convs] == [a.shape[1] for a in hs]
    assert all(not z.weight.any() and not z.bias.any() for z in [*net.zero_convs, net.mid_zero])


@pytest.mark.parametrize(("hidden", "factor"), [((16, 32, 64), 4), ((5, 7), 2), ((16, 32, 96, 256), 8)])
def test_condition_encoder_matches_diffusers(hidden, factor):
    """Oracle: ``diffusers``' ``ControlNetConditioningEmbedding`` (Zhang et al.'s released ``input_hint_block``), same
    weights, same output; both end in a zero-initialised convolution."""
    emb = pytest.importorskip("diffusers.models.controlnets.controlnet").ControlNetConditioningEmbedding
    from lib.latent.controlnet import ConditionEncoder

    torch.manual_seed(0)
    ours = ConditionEncoder(ControlNetConfig(condition_channels=2, factor=factor, hidden=hidden), out_channels=11)
    ref = emb(conditioning_embedding_channels=11, conditioning_channels=2, block_out_channels=hidden)
    assert not ours.out.weight.any() and not ours.out.bias.any() and not ref.conv_out.weight.any()
    torch.nn.init.normal_(ours.out.weight, std=0.1)  # a zero read-out would make the comparison trivial
    torch.nn.init.normal_(ours.out.bias, std=0.1)
    convs = [m for m in ours.net if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + len(ref.blocks)
    for a, b in zip(convs, [ref.conv_in, *ref.blocks], strict=True):
        b.load_state_dict(a.state_dict())
    ref.conv_out.load_state_dict(ours.out.state_dict())
    c = torch.rand(3, 2, factor * 5, factor * 3, generator=torch.Generator().manual_seed(1))  # awkward sizes
    with torch.no_grad():
        out, want = ours(c), ref(c)
    assert out.shape == want.shape == (3, 11, 5, 3)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["zeros", "random", "mask"])
def test_bit_identical_to_the_frozen_unet_at_initialisation(kind):
    unet = _unet()
    model = ControlledUNet(unet, ControlNet.from_unet(unet, SMALL))
    x, t, ctx, mask = _inputs()
    g = torch.Generator().manual_seed(5)
    cond = {"zeros": torch.zeros(3, 1, 32, 32), "random": 10 * torch.randn(3, 1, 32, 32, generator=g),
            "mask": condition_image(make_shapes(3, seed=0))}[kind]  # fmt: skip
    with torch.no_grad():
        ref = unet(x, t, context=ctx, context_mask=mask)
        out = model(x, t, cond, context=ctx, context_mask=mask)
        r = model.residuals(x, t, cond, context=ctx, context_mask=mask)
    assert ref.abs().max() > 0.1  # a non-trivial output
    assert torch.equal(out, ref)
    assert all(not d.any() for d in r.down) and not r.mid.any()
    with torch.no_grad():  # the null context (context=None) too
        assert torch.equal(model(x, t, cond), unet(x, t))


def test_zero_convs_learn_at_step_one_while_nothing_reaches_the_copy():
    unet = _unet()
    net = ControlNet.from_unet(unet, SMALL)
    model = ControlledUNet(unet, net)
    x, t, ctx, mask = _inputs(4)
    cond = condition_image(make_shapes(4, seed=0))
    seen = []  # the inputs of every zero convolution: the copy's skips and middle output

    def keep(module, inputs, output):
        inputs[0].retain_grad()
        seen.append(inputs[0])

    hooks = [z.register_forward_hook(keep) for z in [*net.zero_convs, net.mid_zero]]
    target = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loss = (model(x, t, cond, context=ctx, context_mask=mask) - target).pow(2).mean()
    loss.backward()
    for hk in hooks:
        hk.remove()
    assert len(seen) == len(net.zero_convs) + 1
    assert all(h.grad is not None and not h.grad.any() for h in seen)  # dL/dh = W^T dL/dy = 0
    assert all(z.weight.grad.abs().sum() > 0 for z in [*net.zero_convs, net.mid_zero])  # dL/dW = dL/dy h^T != 0
    copy_grads = [p.grad for p in [*net.copy.parameters(), *net.condition_encoder.parameters()]]
    computed = [g for g in copy_grads if g is not None]  # None only for the copy's unused parts (e.g. its y table)
    assert net.copy.conv_in.weight.grad is not None and net.condition_encoder.out.weight.grad is not None
    assert len(computed) > len(copy_grads) // 2 and all(not g.any() for g in computed)  # computed, exactly zero
    opt.step()
    after = net.state_dict()
    zero_keys = [k for k in after if k.startswith(("zero_convs.", "mid_zero."))]
    assert all(not torch.equal(after[k], before[k]) for k in zero_keys if k.endswith("weight"))
    other = [k for k in after if k not in zero_keys]
    assert all(torch.equal(after[k], before[k]) for k in other)  # Adam's step is 0 / (0 + eps) = 0
    # after step one E(c) is still exactly 0 (its last layer is a zero conv): the output ignores the condition
    with torch.no_grad():
        out_c = model(x, t, cond, context=ctx, context_mask=mask)
        assert torch.equal(out_c, model(x, t, torch.zeros_like(cond), context=ctx, context_mask=mask))
        assert not torch.equal(out_c, unet(x, t, context=ctx, context_mask=mask))  # but the zero convs opened
    # step two: the gradient reaches the trainable copy and the condition encoder's last layer, not behind it
    opt.zero_grad()
    (model(x, t, cond, context=ctx, context_mask=mask) - target).pow(2).mean().backward()
    assert net.copy.conv_in.weight.grad.abs().sum() > 0
    assert net.condition_encoder.out.weight.grad.abs().sum() > 0
    assert all(not p.grad.any() for p in net.condition_encoder.net.parameters())
    # step three: now the layers behind it learn too, and the output depends on the condition
    opt.step()
    opt.zero_grad()
    (model(x, t, cond, context=ctx, context_mask=mask) - target).pow(2).mean().backward()
    assert all(p.grad.any() for p in net.condition_encoder.net.parameters())
    with torch.no_grad():
        assert not torch.equal(model(x, t, cond, context=ctx, context_mask=mask),
                               model(x, t, torch.zeros_like(cond), context=ctx, context_mask=mask))  # fmt: skip


def test_frozen_unet_unchanged_after_training_steps():
    unet = _unet()
    model = ControlledUNet(unet, ControlNet.from_unet(unet, SMALL))
    before = _hash(unet)
    assert all(not p.requires_grad for p in unet.parameters())
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    cond = condition_image(make_shapes(4, seed=0))
    for step in range(4):
        x, t, ctx, mask = _inputs(4, seed=step)
        opt.zero_grad()
        (model(x, t, cond, context=ctx, context_mask=mask) - x).pow(2).mean().backward()
        opt.step()
    assert _hash(unet) == before
    assert model.train().unet.training is False
    with torch.no_grad():  # and the ControlNet did learn something
        x, t, ctx, mask = _inputs(4)
        assert not torch.equal(
            model(x, t, cond, context=ctx, context_mask=mask), unet(x, t, context=ctx, context_mask=mask)
        )


def _trained_pair():
    unet = _unet()
    nets = [ControlNet.from_unet(unet, SMALL) for _ in range(2)]
    torch.manual_seed(7)
    for net in nets:  # stand-ins for trained ControlNets: nonzero zero convolutions
        for z in [*net.zero_convs, net.mid_zero, net.condition_encoder.out]:
            torch.nn.init.normal_(z.weight, std=0.1)
    return unet, nets


def test_strength_scales_residuals_and_two_controlnets_add():
    unet, (a, b) = _trained_pair()
    x, t, ctx, mask = _inputs()
    data = make_shapes(3, seed=0)
    ca, cb = condition_image(data, "mask"), condition_image(data, "edges")
    with torch.no_grad():
        ra, rb = a(x, t, ca, context=ctx, context_mask=mask), b(x, t, cb, context=ctx, context_mask=mask)
        half = a(x, t, ca, context=ctx, context_mask=mask, strength=0.5)
        assert all(torch.allclose(h, 0.5 * d) for h, d in zip(half.down, ra.down, strict=True))
        both = ControlledUNet(unet, [a, b])
        cab = condition_image(data, "mask+edges")
        r = both.residuals(x, t, cab, context=ctx, context_mask=mask)
        assert all(torch.allclose(s, p + q) for s, p, q in zip(r.down, ra.down, rb.down, strict=True))
        assert torch.allclose(r.mid, ra.mid + rb.mid)
        h, hs, emb = unet.encode(x, t, context=ctx, context_mask=mask)
        manual = unet.decode(h, hs, emb, ctx, mask, [p + q for p, q in zip(ra.down, rb.down, strict=True)],
                             ra.mid + rb.mid)  # fmt: skip
        assert torch.allclose(both(x, t, cab, context=ctx, context_mask=mask), manual)
        zero = both(x, t, cab, context=ctx, context_mask=mask, strength=[0.0, 0.0])
        assert torch.equal(zero, unet(x, t, context=ctx, context_mask=mask))
        assert not torch.allclose(both(x, t, cab, context=ctx, context_mask=mask), zero)
    assert isinstance(ra + rb, ControlResiduals)


def test_null_condition_keeps_the_control_image():
    unet, (a, _) = _trained_pair()
    model = ControlledUNet(unet, a)
    x, t, ctx, mask = _inputs()
    cond = {"context": ctx, "context_mask": mask, "condition": torch.ones(3, 1, 32, 32), "strength": 0.5}
    drop = {k: torch.ones(3, dtype=torch.bool) for k in ("context", "context_mask", "condition")}
    null = model.null_condition(cond, drop)
    assert null["condition"] is cond["condition"] and null["strength"] == 0.5
    assert torch.equal(null["context"], unet.null_context.expand_as(ctx))


def test_errors():
    unet = _unet()
    net = ControlNet.from_unet(unet, SMALL)
    model = ControlledUNet(unet, net)
    x, t, ctx, mask = _inputs()
    with pytest.raises(ValueError, match=r"condition must be a float tensor of shape \(3, 1, 32, 32\)"):
        net(x, t, torch.zeros(3, 1, 28, 28), context=ctx)  # wrong size
    with pytest.raises(ValueError, match="condition"):
        net(x, t, torch.zeros(3, 1, 8, 8), context=ctx)  # the latent's size, not the image's
    with pytest.raises(ValueError, match="condition"):
        net(x, t, torch.zeros(2, 1, 32, 32), context=ctx)  # batch
    with pytest.raises(ValueError, match="condition"):
        net(x, t, torch.zeros(3, 1, 32, 32, dtype=torch.long), context=ctx)
    with pytest.raises(ValueError, match=r"condition must be \(B, 1, H, W\)"):
        model(x, t, torch.zeros(3, 2, 32, 32), context=ctx)
    with pytest.raises(ValueError, match="strength"):
        model(x, t, torch.zeros(3, 1, 32, 32), context=ctx, strength=[1.0, 1.0])
    with pytest.raises(TypeError, match="unet"):
        ControlNet.from_unet(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="controlnets"):
        ControlledUNet(unet, [])
    with pytest.raises(ValueError, match="config"):
        ControlledUNet(UNet(UNetConfig(in_channels=4, base_channels=8, heads=2, context_dim=8)), net)
    with pytest.raises(ValueError, match="hidden"):
        ControlNetConfig(hidden=(4, 8))
    with pytest.raises(ValueError, match="factor"):
        ControlNetConfig(factor=3)
    with pytest.raises(ValueError, match="kind"):
        condition_image(make_shapes(1, seed=0), "depth")
