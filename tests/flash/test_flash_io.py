"""HBM traffic formulas (lib/flash/io.py): the Theta(N^2 d^2 / M) scaling and its comparison with Theta(N d + N^2)."""

import pytest

from lib.flash.io import flash1_traffic, flash2_traffic, standard_attention_traffic, tile_sizes


def test_standard_is_quadratic():
    a, b = standard_attention_traffic(1024, 64), standard_attention_traffic(2048, 64)
    assert a.total == 4 * 1024 * 1024 + 4 * 1024 * 64
    assert 3.8 < b.total / a.total < 4.0  # -> 4 as N grows (the N^2 terms)


def test_flash_scales_as_n2_d2_over_m():
    N, d = 16384, 64
    for fn in (flash1_traffic, flash2_traffic):
        t1, t2 = fn(N, d, 64 * 1024), fn(N, d, 128 * 1024)  # twice the SRAM: about half the traffic
        assert 0.45 < t2.total / t1.total < 0.55
        ratio = fn(N, d, 100_000).total / (N * N * d * d / 100_000)
        assert 1 < ratio < 15  # the constant of Theta(N^2 d^2 / M)
    assert flash2_traffic(N, d, 100_000).total < flash1_traffic(N, d, 100_000).total
    assert flash2_traffic(N, d, 100_000).total * 10 < standard_attention_traffic(N, d).total


def test_tile_sizes_and_errors():
    assert tile_sizes(100_000, 64) == (391, 64)
    assert tile_sizes(1024, 64) == (4, 4)
    with pytest.raises(ValueError, match="N must be"):
        flash2_traffic(0, 64, 1000)


@pytest.mark.parametrize("N,bm,bn", [(1024, 128, 128), (1000, 128, 64), (257, 64, 32), (300, 32, 64), (17, 16, 16)])
def test_causal_tile_states_match_the_mask(N, bm, bn):
    """Skipped tiles are entirely masked, unmasked tiles entirely visible, and every visible entry is in a tile."""
    import numpy as np

    from lib.flash.io import causal_tile_states

    states = causal_tile_states(N, bm, bn)
    visible = np.tril(np.ones((N, N), dtype=bool))
    for i in range(states.shape[0]):
        for j in range(states.shape[1]):
            tile = visible[i * bm : (i + 1) * bm, j * bn : (j + 1) * bn]
            if states[i, j] == 0:
                assert not tile.any()
            elif states[i, j] == 1:
                assert tile.all()
            else:
                assert tile.any()
    if bm == bn:
        T = states.shape[0]
        assert (states > 0).sum() == T * (T + 1) // 2 and (states == 2).sum() == T
    with pytest.raises(ValueError, match="N"):
        causal_tile_states(0, 16, 16)
