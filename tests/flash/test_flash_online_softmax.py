"""Online softmax (lib/flash/online_softmax.py) against torch.softmax: properties, -inf rows, huge values."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.flash.online_softmax import (
    online_softmax,
    online_softmax_state,
    online_softmax_weighted_sum,
    safe_softmax,
)

finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)
entry = st.one_of(finite, finite, finite, st.just(float("-inf")))


@settings(max_examples=60, deadline=None)
@given(values=st.lists(entry, min_size=1, max_size=40), block=st.integers(1, 9))
def test_online_softmax_matches_softmax(values, block):
    x = torch.tensor(values, dtype=torch.float64)
    expected = torch.softmax(x, dim=0)
    got = online_softmax(x, block=block)
    if math.isinf(max(values)):  # all -inf: torch gives NaN, so do we
        assert torch.isnan(got).all() and torch.isnan(expected).all()
        return
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)
    state = online_softmax_state(x, block=block)
    torch.testing.assert_close(state.lse, torch.logsumexp(x, dim=0), rtol=1e-12, atol=1e-12)
    assert state.m == x.max()


@settings(max_examples=40, deadline=None)
@given(values=st.lists(finite, min_size=1, max_size=30), block=st.integers(1, 7), seed=st.integers(0, 2**16))
def test_weighted_sum_is_softmax_times_v(values, block, seed):
    x = torch.tensor(values, dtype=torch.float64)
    v = torch.randn(len(values), 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    torch.testing.assert_close(online_softmax_weighted_sum(x, v, block), torch.softmax(x, 0) @ v)


def test_huge_values_do_not_overflow():
    x = torch.tensor([1e30, -1e30, 1e30 - 1e24, 3.0e29, 88.0, 1000.0], dtype=torch.float32)
    naive = torch.exp(x) / torch.exp(x).sum()  # what "unsafe" softmax does: inf / inf
    assert torch.isnan(naive).any()
    for fn in (safe_softmax, lambda t: online_softmax(t, block=2)):
        p = fn(x)
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p, torch.softmax(x, 0))


def test_leading_minus_inf_blocks():
    x = torch.tensor([float("-inf")] * 5 + [0.5, -2.0, float("-inf"), 3.0], dtype=torch.float64)
    for block in (1, 2, 3, 5):
        torch.testing.assert_close(online_softmax(x, block), torch.softmax(x, 0))
    assert torch.isnan(safe_softmax(torch.full((4,), float("-inf")))).all()


def test_bad_input():
    with pytest.raises(ValueError, match="x must be one non-empty row"):
        online_softmax(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="floating point"):
        online_softmax(torch.arange(3))
    with pytest.raises(ValueError, match="block"):
        online_softmax(torch.zeros(3), block=0)
    with pytest.raises(ValueError, match="v must be"):
        online_softmax_weighted_sum(torch.zeros(3), torch.zeros(4, 2))
