"""Integer round-to-nearest-even vs torch's casts (lib/precision/rounding.py)."""

import pytest
import torch

from lib.precision import round_to_bf16, round_to_fp16

CASES = [(round_to_bf16, torch.bfloat16), (round_to_fp16, torch.float16)]


def assert_bit_exact(x: torch.Tensor, fn, dtype) -> None:
    ours, ref = fn(x), x.to(dtype).float()
    nan = torch.isnan(ref)
    assert torch.equal(torch.isnan(ours), nan)
    assert torch.equal(ours[~nan].view(torch.int32), ref[~nan].view(torch.int32))


def specials() -> torch.Tensor:
    f16_sub = [2.0**-24, 2.0**-25, 2.0**-25 * 1.0000001, 3 * 2.0**-25, 2.0**-14 - 2.0**-25, 2.0**-14, 1e-8, 6e-8]
    halfway = [1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-8, 1 + 3 * 2.0**-8, 2049.0, 2051.0, 65504.0, 65519.0]
    overflow = [65520.0, 65536.0, 1e6, 3.3961776e38, 3.4028235e38]
    vals = [0.0, 1.0, -1.0, float("inf"), float("nan"), 1e-45, 1e-40, 1.1754942e-38, *f16_sub, *halfway, *overflow]
    x = torch.tensor(vals, dtype=torch.float32)
    return torch.cat([x, -x])


@pytest.mark.parametrize("fn,dtype", CASES)
def test_random_bit_patterns(fn, dtype):
    g = torch.Generator().manual_seed(1)
    bits = torch.randint(-(2**31), 2**31, (1_000_000,), generator=g, dtype=torch.int64).to(torch.int32)
    assert_bit_exact(bits.view(torch.float32), fn, dtype)


@pytest.mark.parametrize("fn,dtype", CASES)
def test_random_values_in_range(fn, dtype):
    g = torch.Generator().manual_seed(2)
    scale = torch.exp2(torch.randint(-30, 18, (500_000,), generator=g).float())
    assert_bit_exact(torch.randn(500_000, generator=g) * scale, fn, dtype)


@pytest.mark.parametrize("fn,dtype", CASES)
def test_specials_and_halfway(fn, dtype):
    x = specials()
    assert_bit_exact(x, fn, dtype)
    # every exact halfway point between consecutive target values (ties to even)
    m = 7 if dtype == torch.bfloat16 else 10
    lo = torch.arange(1024, dtype=torch.float32)
    mid = (1 + (lo + 0.5) / 2**m) * 4.0  # halfway between 4 (1 + k/2^m) and its successor
    assert_bit_exact(torch.cat([mid, -mid, mid * 2.0**-13]), fn, dtype)


def test_signed_zero_and_underflow():
    out = round_to_fp16(torch.tensor([-1e-10, 2.0**-25, 2.0**-25 * 1.01]))
    assert out[0].item() == 0.0 and torch.signbit(out[0])
    assert out[1].item() == 0.0  # exactly half the smallest subnormal: ties to even (zero)
    assert out[2].item() == 2.0**-24


def test_shape_kept_and_bad_input():
    x = torch.randn(3, 4, 5)
    assert round_to_bf16(x).shape == (3, 4, 5) and round_to_fp16(x.transpose(0, 2)).shape == (5, 4, 3)
    with pytest.raises(TypeError, match="float32"):
        round_to_fp16(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="x must be"):
        round_to_bf16([1.0])
