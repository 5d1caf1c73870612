"""Two gloo processes on the CPU: DDP gradient == single-process full-batch gradient (lib/precision/ddp.py)."""

import pytest
import torch

from lib.precision.ddp import check_ddp_gradients, shard


def test_ddp_gradient_equals_full_batch_gradient():
    res = check_ddp_gradients(world_size=2, seed=0)
    assert res.max_abs_grad > 1e-3
    assert res.max_abs_diff < 1e-14  # float64: only the summation order differs


def test_shard():
    x, y = torch.arange(12).reshape(6, 2), torch.arange(6)
    parts = [shard((x, y), r, 3) for r in range(3)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(parts[1][1], torch.tensor([2, 3]))
    with pytest.raises(ValueError, match="divisible"):
        shard((x, y), 0, 4)
    with pytest.raises(ValueError, match="rank"):
        shard((x, y), 3, 3)
