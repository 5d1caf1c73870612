"""Discrete flow layers: log-det against the autograd Jacobian's slogdet (float64), inverse(forward(x)) = x,
on fresh random inputs of awkward shapes; bad input raises."""

import pytest
import torch

from lib.flows.base import FlowSequential, jacobian_logdet
from lib.flows.coupling import (
    AdditiveCoupling,
    AffineCoupling,
    CNNConditioner,
    MLPConditioner,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
)
from lib.flows.layers import ActNorm, InvConv1x1, Split, Squeeze, Unsqueeze


def _perturb(layer, scale=0.3, seed=0):
    """Move every parameter off its (often identity) initialisation."""
    g = torch.Generator().manual_seed(seed)
    layer = layer.double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return layer


def _check(layer, shape, seed=1, tol=1e-9):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y, logdet = layer(x)
    assert y.shape == x.shape and logdet.shape == (shape[0],)
    ref = jacobian_logdet(lambda v: layer(v)[0], x)
    assert torch.allclose(logdet, ref, atol=tol, rtol=tol), (logdet, ref)
    assert torch.allclose(layer.inverse(y), x, atol=1e-10)


def test_couplings_vector_masks():
    for parity in (0, 1):
        m = alternating_mask(5, parity)
        _check(_perturb(AffineCoupling(m, MLPConditioner(5, 7, 2))), (3, 5))
        _check(_perturb(AdditiveCoupling(m, MLPConditioner(5, 7, 1, out_mult=1))), (3, 5))


def test_couplings_image_masks():
    _check(_perturb(AffineCoupling(checkerboard_mask(1, 6, 4, 1), CNNConditioner(1, 5))), (2, 1, 6, 4))
    _check(_perturb(AffineCoupling(channel_mask(4, 3, 5, 0), CNNConditioner(4, 6))), (2, 4, 3, 5))
    _check(_perturb(AdditiveCoupling(channel_mask(2, 3, 3, 1), CNNConditioner(2, 4, out_mult=1))), (2, 2, 3, 3))


def test_additive_is_volume_preserving_and_fresh_couplings_are_identity():
    x = torch.randn(4, 6, dtype=torch.float64)
    layer = AffineCoupling(alternating_mask(6, 0), MLPConditioner(6, 8)).double()
    y, ld = layer(x)
    assert torch.equal(y, x) and torch.equal(ld, torch.zeros(4, dtype=torch.float64))
    _, ld = _perturb(AdditiveCoupling(alternating_mask(6, 1), MLPConditioner(6, 8, out_mult=1)))(x)
    assert torch.equal(ld, torch.zeros(4, dtype=torch.float64))


def test_actnorm_data_init_and_logdet():
    layer = ActNorm(3).double()
    x = 2.0 + 3.0 * torch.randn(64, 3, 5, 2, dtype=torch.float64)
    y, _ = layer(x)  # training mode: data-dependent initialisation
    assert torch.allclose(y.mean((0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(y.std((0, 2, 3)), torch.ones(3, dtype=torch.float64), atol=1e-10)
    layer.eval()
    _check(_perturb(layer), (2, 3, 5, 2))
    _check(_perturb(ActNorm(4).eval()), (3, 4))


@pytest.mark.parametrize("lu", [True, False])
def test_invconv_logdet_and_inverse(lu):
    layer = _perturb(InvConv1x1(5, lu=lu, generator=torch.Generator().manual_seed(3)), scale=0.1)
    _check(layer, (2, 5, 3, 2))
    _check(layer, (3, 5))
    with torch.no_grad():
        W, logdet = layer.matrix(torch.float64)
    assert float(logdet) == pytest.approx(float(torch.linalg.slogdet(W).logabsdet), abs=1e-10)


def test_invconv_lu_reproduces_its_initial_matrix():
    w = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))[0]
    layer = InvConv1x1(6, lu=True, weight=w)
    assert torch.allclose(layer.matrix(torch.float64)[0], w, atol=1e-6)


def test_invconv_rejects_singular_and_nonfinite():
    w = torch.randn(4, 4)
    w[3] = w[0] + w[1]  # rank 3
    with pytest.raises(ValueError, match="singular"):
        InvConv1x1(4, weight=w)
    with pytest.raises(ValueError, match="non-finite"):
        InvConv1x1(2, weight=torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="weight"):
        InvConv1x1(3, weight=torch.eye(2))
    layer = InvConv1x1(2, lu=False, weight=torch.eye(2))
    with torch.no_grad():
        layer.weight.zero_()
    with pytest.raises(ValueError, match="singular"):
        layer.inverse(torch.randn(1, 2))


def test_squeeze_split_roundtrip():
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    y, ld = Squeeze()(x)
    assert y.shape == (2, 12, 2, 3) and torch.equal(ld, torch.zeros(2, dtype=torch.float64))
    assert torch.equal(Squeeze().inverse(y), x)
    assert torch.equal(y[:, 0], x[:, 0, 0::2, 0::2])  # channel 0 of the block (0, 0) offsets
    inner = FlowSequential(Squeeze(), _perturb(InvConv1x1(4, lu=True)), Unsqueeze())
    _check(Split(2, inner.double()), (2, 3, 4, 2))


def test_bad_inputs():
    layer = AffineCoupling(alternating_mask(2, 0), MLPConditioner(2, 4))
    with pytest.raises(ValueError, match="non-finite"):
        layer(torch.tensor([[0.0, float("inf")]]))
    with pytest.raises(TypeError, match="floating"):
        layer(torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="tensor"):
        layer([[0.0, 1.0]])
    with pytest.raises(ValueError, match="zeros and ones"):
        AffineCoupling(torch.ones(3), MLPConditioner(3, 4))
    with pytest.raises(ValueError, match="only zeros and ones"):
        AffineCoupling(torch.tensor([0.5, 1.0]), MLPConditioner(2, 4))
    with pytest.raises(ValueError, match="even height"):
        Squeeze()(torch.randn(1, 1, 3, 4))
    with pytest.raises(ValueError, match="channels"):
        ActNorm(3)(torch.randn(2, 4))
    with pytest.raises(ValueError, match="channels"):
        InvConv1x1(3)(torch.randn(2, 4, 2, 2))
    with pytest.raises(ValueError, match="channels must be an even"):
        channel_mask(3, 2, 2, 0)
    with pytest.raises(ValueError, match="parity"):
        alternating_mask(4, 2)
    with pytest.raises(ValueError, match="keep"):
        Split(0, FlowSequential())
