"""Linear RNNs (lib/ssm/linear_rnn.py): retention's three forms agree, the LRU's parallel scan equals its
recurrence, and the selective SSM is multiplication by a semiseparable matrix."""

import pytest
import torch

from lib.ssm.linear_rnn import (
    LRU,
    retention_chunkwise,
    retention_parallel,
    retention_recurrent,
    semiseparable_matrix,
)
from lib.ssm.scan import selective_scan_ref


@pytest.mark.parametrize("L,chunk", [(1, 4), (7, 3), (100, 16), (257, 64)])
def test_retention_forms_agree(L, chunk):
    g = torch.Generator().manual_seed(L)
    q, k = (torch.randn(2, L, 6, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(2, L, 5, generator=g, dtype=torch.float64)
    p = retention_parallel(q, k, v, 0.9)
    torch.testing.assert_close(retention_recurrent(q, k, v, 0.9), p)
    torch.testing.assert_close(retention_chunkwise(q, k, v, 0.9, chunk), p)


def test_lru_parallel_equals_recurrent():
    torch.manual_seed(0)
    lru = LRU(4, 6)
    assert (lru.lambda_.abs() < 1).all()
    x = torch.randn(2, 30, 4)
    h, ys = None, []
    for t in range(30):
        y, h = lru.step(x[:, t], h)
        ys.append(y)
    torch.testing.assert_close(lru(x), torch.stack(ys, 1), rtol=1e-5, atol=1e-5)


def test_selective_ssm_is_a_semiseparable_matrix():
    g = torch.Generator().manual_seed(0)
    b, d, n, L = 2, 3, 4, 20
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    delta, A = (
        torch.rand(b, d, L, generator=g, dtype=torch.float64),
        -torch.rand(d, n, generator=g, dtype=torch.float64) - 0.5,
    )
    B, C, u = r(b, n, L), r(b, n, L), r(b, d, L)
    M = semiseparable_matrix(delta, A, B, C)
    torch.testing.assert_close(torch.einsum("bdts,bds->bdt", M, u), selective_scan_ref(u, delta, A, B, C))
    assert (M.triu(1) == 0).all()
    for t0 in (5, 10, 15):  # blocks strictly below the diagonal have rank <= n
        assert int(torch.linalg.matrix_rank(M[0, 0, t0:, :t0])) <= n


def test_errors():
    x = torch.zeros(1, 3, 2)
    with pytest.raises(ValueError, match="gamma must be in"):
        retention_parallel(x, x, x, 1.5)
    with pytest.raises(ValueError, match="q must be"):
        retention_recurrent(x[0], x, x, 0.5)
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        retention_chunkwise(x, x, x, 0.5, 0)
    with pytest.raises(ValueError, match="r_min"):
        LRU(2, 2, r_min=0.9, r_max=0.5)
