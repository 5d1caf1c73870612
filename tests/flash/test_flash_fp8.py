"""FP8 block quantisation and incoherent processing (lib/flash/fp8.py)."""

import pytest
import torch

from lib.flash.fp8 import E4M3_MAX, fp8_logit_error, hadamard, quantize_fp8_blockwise, random_rotation


def test_rotation_is_orthogonal_and_keeps_logits():
    g = torch.Generator().manual_seed(0)
    M = random_rotation(64, g)
    torch.testing.assert_close(M @ M.T, torch.eye(64, dtype=torch.float64))
    q, k = torch.randn(10, 64, dtype=torch.float64), torch.randn(7, 64, dtype=torch.float64)
    torch.testing.assert_close((q @ M) @ (k @ M).T, q @ k.T)
    assert torch.equal(hadamard(2) * 2**0.5, torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64))


def test_blockwise_quantisation():
    x = torch.tensor([[1.0, -2.0], [300.0, 0.5], [1e-3, 2e-3]], dtype=torch.float64)
    y = quantize_fp8_blockwise(x, block=1)
    assert y.abs().amax(1).tolist() == x.abs().amax(1).tolist()  # each block's max maps to E4M3_MAX exactly
    assert ((y - x).abs() <= 2**-3 * x.abs()).all()  # e4m3: 3 mantissa bits, relative rounding <= 1/16
    assert E4M3_MAX == float(torch.finfo(torch.float8_e4m3fn).max)
    with pytest.raises(ValueError, match="block"):
        quantize_fp8_blockwise(x, 0)
    with pytest.raises(ValueError, match="2-D"):
        quantize_fp8_blockwise(x[0], 1)
    with pytest.raises(ValueError, match="power of two"):
        hadamard(24)


def test_rotation_helps_only_with_outliers():
    g = torch.Generator().manual_seed(1)
    q, k = (torch.randn(256, 64, generator=g, dtype=torch.float64) for _ in range(2))
    M = random_rotation(64, g)
    plain, rotated = fp8_logit_error(q, k, 64), fp8_logit_error(q, k, 64, M)
    assert 0.5 < plain / rotated < 2  # no outliers: nothing to spread
    q[:, :2] *= 20
    k[:, :2] *= 20
    assert fp8_logit_error(q, k, 64) > 3 * fp8_logit_error(q, k, 64, M)
    with pytest.raises(ValueError, match="one d"):
        fp8_logit_error(q, k[:, :32], 64)
