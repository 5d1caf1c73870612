"""float_info from the bit layout vs torch.finfo (lib/precision/formats.py)."""

import math

import pytest
import torch

from lib.precision import FloatFormat, float_info, representable

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2]


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_finfo(dtype):
    info, fi = float_info(dtype), torch.finfo(dtype)
    assert info.bits == fi.bits
    assert info.max == fi.max
    assert info.min_normal == fi.tiny == fi.smallest_normal
    assert info.eps == fi.eps
    assert info.resolution == pytest.approx(fi.resolution)


@pytest.mark.parametrize("dtype", DTYPES)
def test_min_subnormal_is_the_bit_pattern_one(dtype):
    info = float_info(dtype)
    one = torch.tensor([1], dtype=torch.uint8 if info.bits == 8 else torch.int64)
    if info.bits in (16, 32, 64):
        one = one.to({16: torch.int16, 32: torch.int32, 64: torch.int64}[info.bits])
    assert float(one.view(dtype).double()) == info.min_subnormal
    # half of it rounds (ties to even) to zero; a bit more rounds up to it
    assert float(torch.tensor(info.min_subnormal / 2, dtype=torch.float64).to(dtype).double()) == 0.0
    assert float(torch.tensor(info.min_subnormal * 0.51, dtype=torch.float64).to(dtype).double()) == info.min_subnormal


def test_tf32_and_strings():
    tf32 = float_info("tf32")
    assert (tf32.bits, tf32.exponent_bits, tf32.mantissa_bits) == (19, 8, 10)
    assert tf32.eps == float_info(torch.float16).eps  # TF32 has FP16's precision ...
    assert tf32.max == pytest.approx(float_info(torch.float32).max, rel=1e-3)  # ... and FP32's range
    assert float_info("tfloat32") == tf32 and float_info("bf16") == float_info(torch.bfloat16)
    assert float_info(torch.float16).decimal_digits == pytest.approx(11 * math.log10(2))


def test_e4m3fn_has_no_inf_and_max_448():
    info = float_info(torch.float8_e4m3fn)
    assert not info.has_inf and info.max == 448.0
    assert float_info(torch.float8_e5m2).max == 57344.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2])
def test_representable_is_every_finite_positive_value(dtype):
    vals = representable(dtype)
    bits = float_info(dtype).bits
    ints = torch.arange(2**bits, dtype=torch.int64)
    ints = ints.to(torch.int16) if bits == 16 else ints.to(torch.uint8)
    allv = ints.view(dtype).double()
    expected = allv[torch.isfinite(allv) & (allv > 0)].unique()
    assert torch.equal(vals.sort().values, expected)


def test_bad_input():
    with pytest.raises(ValueError, match="dtype"):
        float_info("float7")
    with pytest.raises(ValueError, match="dtype"):
        float_info(torch.int32)
    with pytest.raises(TypeError, match="dtype"):
        float_info(16)
    with pytest.raises(ValueError, match="exponent_bits"):
        FloatFormat("x", 1, 3)
    with pytest.raises(ValueError, match="at most 16 bits"):
        representable(torch.float32)
