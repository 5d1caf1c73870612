"""Split-KV attention (lib/flash/decoding.py) equals full attention, for any number of chunks."""

import pytest
import torch

from lib.flash.decoding import split_kv_attention
from lib.nn.attention import scaled_dot_product_attention


@pytest.mark.parametrize("N_q,N_k,splits", [(1, 1000, 7), (1, 33, 33), (5, 64, 1), (3, 100, 4)])
def test_split_kv_matches_full_attention(N_q, N_k, splits):
    g = torch.Generator().manual_seed(N_k + splits)
    q = torch.randn(2, 3, N_q, 16, generator=g, dtype=torch.float64) * 3
    k, v = (torch.randn(2, 3, N_k, 16, generator=g, dtype=torch.float64) for _ in range(2))
    torch.testing.assert_close(split_kv_attention(q, k, v, splits), scaled_dot_product_attention(q, k, v))


def test_split_kv_bad_input():
    x = torch.zeros(1, 1, 4, 8)
    with pytest.raises(ValueError, match="num_splits"):
        split_kv_attention(x, x, x, 5)
    with pytest.raises(ValueError, match="num_splits"):
        split_kv_attention(x, x, x, 0)
    with pytest.raises(ValueError, match="4-D"):
        split_kv_attention(x[0], x, x, 1)
    with pytest.raises(ValueError, match="do not match"):
        split_kv_attention(x, x, torch.zeros(1, 1, 5, 8), 1)
