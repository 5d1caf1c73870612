"""Generic rounding vs torch's casts, per-tensor and delayed scaling, the FP8 linear layer
(lib/precision/rounding.py round_to_format, lib/precision/fp8.py)."""

import math

import pytest
import torch

from lib.precision import FloatFormat, float_info, round_to_bf16, round_to_fp16
from lib.precision.fp8 import E4M3, E5M2, DelayedScaling, Fp8Linear, amax_scale, quantize, to_fp8
from lib.precision.rounding import round_to_format

DTYPES = [torch.float16, torch.bfloat16, E4M3, E5M2]


def inputs(seed):
    g = torch.Generator().manual_seed(seed)
    bits = torch.randint(-(2**31), 2**31, (300_000,), generator=g, dtype=torch.int64).to(torch.int32)
    scale = torch.exp2(torch.randint(-30, 18, (300_000,), generator=g).float())
    special = torch.tensor([0.0, -0.0, 448.0, 464.0, 464.01, 480.0, 57344.0, 61439.0, 61440.0, 2.0**-10, 2.0**-17])
    return torch.cat([bits.view(torch.float32), torch.randn(300_000, generator=g) * scale, special, -special])


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_to_format_is_bit_exact_with_torch(dtype):
    x = inputs(3)
    ours, ref = round_to_format(x, dtype), x.to(dtype).float()
    nan = ref.isnan()
    assert torch.equal(ours.isnan(), nan)
    assert torch.equal(ours[~nan].view(torch.int32), ref[~nan].view(torch.int32))


def test_round_to_format_agrees_with_the_integer_roundings_and_saturates():
    x = inputs(4)
    x = x[~x.isnan()]
    assert torch.equal(round_to_format(x, "float16").view(torch.int32), round_to_fp16(x).view(torch.int32))
    assert torch.equal(round_to_format(x, "bfloat16").view(torch.int32), round_to_bf16(x).view(torch.int32))
    big = torch.tensor([1e5, -1e6, float("inf")])
    assert round_to_format(big, "float16").tolist() == [float("inf"), float("-inf"), float("inf")]
    assert round_to_format(big, "float16", saturate=True).tolist() == [65504.0, -65504.0, 65504.0]
    assert round_to_format(big, E4M3).tolist() == [448.0, -448.0, 448.0]  # as torch's cast
    # a made-up IEEE-style format: E3M2 (bias 3): max 1.75 * 2**3 = 14, min subnormal 2**-4
    e3m2 = FloatFormat("e3m2", 3, 2)
    assert float_info(e3m2).max == 14.0
    v = torch.tensor([12.5, 15.0, 0.03, 0.0313, 0.09])  # ties to even: 12.5 -> 12, 15 -> 16 (overflow)
    assert round_to_format(v, e3m2).tolist() == [12.0, float("inf"), 0.0, 0.0625, 0.0625]
    assert round_to_format(v, e3m2, saturate=True).tolist()[:2] == [12.0, 14.0]
    with pytest.raises(TypeError, match="float32"):
        round_to_format(torch.zeros(2, dtype=torch.float64), E4M3)
    with pytest.raises(TypeError, match="x must be"):
        round_to_format([1.0], E4M3)


def test_quantize_and_amax_scale():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10_000, generator=g) * 1e-6  # gradient-sized values
    assert float((quantize(x, E4M3) == 0).float().mean()) == 1.0  # all below E4M3's smallest subnormal
    s = amax_scale(float(x.abs().max()), E4M3)
    assert s == 2.0 ** int(torch.log2(torch.tensor(s)))  # a power of two
    assert 448 / 2 < float(x.abs().max()) * s <= 448
    q = quantize(x, E4M3, s)
    normal = x.abs() * s >= float_info(E4M3).min_normal
    rel = ((q - x).abs() / x.abs())[normal]
    assert float(rel.max()) <= float_info(E4M3).eps / 2 + 1e-7  # unit roundoff of a 3-bit mantissa
    assert amax_scale(0.0) == 1.0 and amax_scale(float("inf")) == 1.0
    assert amax_scale(1.0, E4M3, margin=1) == amax_scale(1.0, E4M3) / 2
    with pytest.raises(ValueError, match="scale"):
        quantize(x, E4M3, 0.0)
    with pytest.raises(ValueError, match="margin"):
        amax_scale(1.0, E4M3, margin=-1)
    with pytest.raises(TypeError, match="x must"):
        quantize(torch.arange(3), E4M3)


def test_delayed_scaling_uses_the_history():
    ds = DelayedScaling(E4M3, history_len=2)
    ones = torch.ones(4)
    ds(ones)  # first call: current scaling from amax 1
    assert ds.scale == amax_scale(1.0) and ds.saturated == 0
    out = ds(10 * ones)  # spike: the scale still comes from amax 1, so 10 * s > 448 saturates
    assert ds.saturated == 4 and torch.allclose(out, torch.full((4,), 448 / amax_scale(1.0)))
    assert ds.scale == amax_scale(10.0)  # the history now holds the spike
    ds(ones)
    ds(ones)  # the spike left the history of length 2
    assert ds.scale == amax_scale(1.0) and ds.history == [1.0, 1.0]
    with pytest.raises(ValueError, match="fmt"):
        DelayedScaling(torch.float16)
    with pytest.raises(ValueError, match="history_len"):
        DelayedScaling(E4M3, history_len=0)


def test_delayed_scaling_follows_transformer_engines_rule():
    """TE: scale = fp8_max / max(amax history) / 2**margin, kept when that max is 0 or not finite.

    Reference written from TE's documented rule (``amax_compute_algo="max"``); ours additionally rounds
    the scale down to a power of two and starts with current scaling (TE starts at s = 1).
    """
    g = torch.Generator().manual_seed(3)
    amaxes = [0.5, 3.0, 0.0, 0.0, 0.0, 0.0, 0.02, 40.0, 1.0]  # a run of all-zero tensors in the middle
    for fmt, margin in [(E4M3, 0), (E5M2, 2)]:
        ds = DelayedScaling(fmt, history_len=3, margin=margin)
        fp8_max, hist, ref = float_info(fmt).max, [], None
        for a in amaxes:
            x = torch.randn(64, generator=g)
            x = a * x / x.abs().max() if a > 0 else torch.zeros(64)
            if ref is None:
                ref = amax_scale(a, fmt, margin)
            used = ds.scale if ds.scale is not None else ref
            assert used == ref
            ds(x)
            hist = (hist + [float(x.abs().max())])[-3:]
            top = max(hist)
            if top > 0:  # TE keeps the previous scale when the history's amax is 0
                te = fp8_max / top / 2**margin
                ref = 2.0 ** math.floor(math.log2(te))
                assert ref <= te < 2 * ref
            assert ds.scale == ref
        assert ds.scale == amax_scale(40.0, fmt, margin)
    ds = DelayedScaling(E4M3, history_len=1)
    ds(torch.ones(3))
    ds(torch.zeros(3))
    assert ds.scale == amax_scale(1.0)  # amax 0: the scale is kept, not reset to 1


def test_fp8_linear_forward_and_backward():
    g = torch.Generator().manual_seed(1)
    lin = Fp8Linear(5, 3, scaling="current")
    x = torch.randn(7, 5, generator=g, requires_grad=True)
    y = lin(x)
    sx, sw = amax_scale(float(x.detach().abs().max())), amax_scale(float(lin.weight.detach().abs().max()))
    xq, wq = quantize(x.detach(), E4M3, sx), quantize(lin.weight.detach(), E4M3, sw)
    torch.testing.assert_close(y, xq @ wq.T + lin.bias, rtol=0, atol=1e-6)
    gy = torch.randn(7, 3, generator=g)
    y.backward(gy)
    gq = quantize(gy, E5M2, amax_scale(float(gy.abs().max()), E5M2))
    torch.testing.assert_close(x.grad, gq @ wq, rtol=0, atol=1e-6)
    torch.testing.assert_close(lin.weight.grad, gq.T @ xq, rtol=0, atol=1e-6)
    torch.testing.assert_close(lin.bias.grad, gy.sum(0))
    # close to the exact product: E4M3 keeps ~2 significant digits
    exact = x.detach() @ lin.weight.detach().T + lin.bias.detach()
    assert float((y.detach() - exact).abs().max()) < 0.1 * float(exact.abs().max())


def test_to_fp8_and_bad_input():
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Sequential(torch.nn.Linear(8, 2)))
    w = net[2][0].weight.detach().clone()
    to_fp8(net, "none")
    assert isinstance(net[0], Fp8Linear) and isinstance(net[2][0], Fp8Linear) and net[0].scaling == "none"
    assert torch.equal(net[2][0].weight, w)
    assert net(torch.randn(3, 4)).shape == (3, 2)
    with pytest.raises(ValueError, match="scaling"):
        Fp8Linear(2, 2, scaling="per-channel")
    with pytest.raises(TypeError, match="model"):
        to_fp8("net")
