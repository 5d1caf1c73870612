"""lib/nn/positional.py: sinusoidal code, the shift-is-a-rotation identity, 2D sin-cos, rotary."""

import math

import pytest
import torch

from lib.nn.positional import (
    SinusoidalPositionalEncoding,
    apply_rotary,
    frequencies,
    shift_matrix,
    sincos_2d,
    sinusoidal_encoding,
)


def test_values_match_the_paper_formula():
    d, pe = 16, sinusoidal_encoding(50, 16, dtype=torch.float64)
    for pos in (0, 1, 7, 49):
        for i in range(d // 2):
            w = 1.0 / 10000 ** (2 * i / d)
            assert math.isclose(pe[pos, 2 * i], math.sin(pos * w), abs_tol=1e-12)
            assert math.isclose(pe[pos, 2 * i + 1], math.cos(pos * w), abs_tol=1e-12)
    # every pair lies on the unit circle: ||PE(pos)||^2 = d / 2
    torch.testing.assert_close(pe.pow(2).sum(1), torch.full((50,), d / 2, dtype=torch.float64))


@pytest.mark.parametrize("k", [1, 3, -5, 17.5])
def test_shift_is_a_fixed_rotation(k):
    d = 32
    pos = torch.arange(0, 40, dtype=torch.float64) + 10
    R = shift_matrix(k, d)
    torch.testing.assert_close(
        sinusoidal_encoding(pos, d, dtype=torch.float64) @ R.T, sinusoidal_encoding(pos + k, d, dtype=torch.float64)
    )
    torch.testing.assert_close(R @ R.T, torch.eye(d, dtype=torch.float64))  # orthogonal
    torch.testing.assert_close(R.T, shift_matrix(-k, d))


def test_dot_product_depends_on_offset_only():
    pe = sinusoidal_encoding(100, 24, dtype=torch.float64)
    assert torch.allclose(pe[10] @ pe[13], pe[50] @ pe[53])
    assert torch.allclose(pe[10] @ pe[13], pe[50] @ pe[47])  # symmetric in the offset


def test_module_adds_table_and_checks_shape():
    m = SinusoidalPositionalEncoding(8, max_len=20)
    x = torch.zeros(2, 5, 8)
    torch.testing.assert_close(m(x)[1], sinusoidal_encoding(5, 8))
    with pytest.raises(ValueError, match="offset \\+ T <= 20"):
        m(torch.zeros(1, 21, 8))
    # an offset continues the table: rows offset .. offset + T - 1 (cached decoding feeds one token at a time)
    torch.testing.assert_close(m(torch.zeros(1, 3, 8), offset=4)[0], sinusoidal_encoding(7, 8)[4:])
    with pytest.raises(ValueError, match="offset"):
        m(torch.zeros(1, 3, 8), offset=18)
    with pytest.raises(ValueError, match="offset must be"):
        m(torch.zeros(1, 3, 8), offset=-1)
    assert "pe" not in m.state_dict()  # a buffer recomputed at construction, not a weight


def test_sincos_2d_halves_are_row_and_column_codes():
    H, W, d = 3, 4, 16
    pe = sincos_2d(H, W, d).view(H, W, d)
    torch.testing.assert_close(pe[2, 1, : d // 2], sinusoidal_encoding(H, d // 2)[2])
    torch.testing.assert_close(pe[2, 1, d // 2 :], sinusoidal_encoding(W, d // 2)[1])
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(2, 2, 6)


def test_rotary_scores_depend_on_relative_position():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 16, generator=g, dtype=torch.float64)
    T = 30
    qs = apply_rotary(q.expand(T, 16).contiguous())  # same vector at every position
    ks = apply_rotary(k.expand(T, 16).contiguous())
    scores = qs @ ks.T  # (T, T)
    for off in (-3, 0, 5):
        diag = torch.diagonal(scores, off)
        torch.testing.assert_close(diag, diag[:1].expand_as(diag))
    # rotation keeps norms; position 0 is unchanged
    torch.testing.assert_close(qs.norm(dim=1), q.norm().expand(T))
    torch.testing.assert_close(qs[0], q)


def test_bad_arguments():
    with pytest.raises(ValueError, match="even"):
        sinusoidal_encoding(4, 7)
    with pytest.raises(ValueError, match="base"):
        frequencies(8, base=1.0)
    with pytest.raises(ValueError, match="positions"):
        sinusoidal_encoding(0, 8)
    with pytest.raises(ValueError, match="positions must have shape"):
        apply_rotary(torch.zeros(5, 4), positions=torch.arange(4))
