"""Tests for lib/rl/replay.py: ring-buffer wrap-around, uniform sampling, shapes and errors."""

import pytest
import torch

from lib.rl.replay import ReplayBuffer
from lib.rl.rollout import Rollout


def _fill(buf: ReplayBuffer, values) -> None:
    v = torch.as_tensor(values, dtype=torch.float32)
    B = len(v)
    buf.add(
        v[:, None].expand(B, buf.obs_dim),
        v[:, None].expand(B, buf.act_dim),
        v,
        v[:, None] + 0.5 * torch.ones(B, buf.obs_dim),
        v > 100,
    )


def test_capacity_wrap_around_keeps_the_last_transitions():
    buf = ReplayBuffer(capacity=5, obs_dim=3, act_dim=2)
    for i in range(4):
        _fill(buf, [i])
    assert len(buf) == 4 and buf.pos == 4
    _fill(buf, [4, 5, 6])  # a batch that wraps around the end
    assert len(buf) == 5 and buf.pos == 2 and buf.added == 7
    assert sorted(buf.rewards.tolist()) == [2, 3, 4, 5, 6]
    assert buf.rewards.tolist() == [5, 6, 2, 3, 4]  # ring order: 5, 6 overwrote 0, 1
    torch.testing.assert_close(buf.obs[:, 0], buf.rewards)
    torch.testing.assert_close(buf.next_obs[:, 1], buf.rewards + 0.5)
    _fill(buf, list(range(10, 22)))  # a batch larger than the capacity: only its last 5 survive
    assert sorted(buf.rewards.tolist()) == [17, 18, 19, 20, 21] and buf.added == 19 and len(buf) == 5


def test_sampling_is_uniform_and_only_over_stored_transitions():
    buf = ReplayBuffer(capacity=16, obs_dim=1, act_dim=1)
    _fill(buf, list(range(10)))
    g = torch.Generator().manual_seed(0)
    n = 200_000
    idx = buf.sample(n, g).rewards.long()
    counts = torch.bincount(idx, minlength=16).double()
    assert counts[10:].sum() == 0  # never an empty slot
    expected = n / 10
    chi2 = float(((counts[:10] - expected) ** 2 / expected).sum())
    assert chi2 < 27.9  # chi-square with 9 degrees of freedom: P(chi2 > 27.9) = 0.001
    # the same generator state gives the same batch (explicit randomness)
    a = buf.sample(8, torch.Generator().manual_seed(3))
    b = buf.sample(8, torch.Generator().manual_seed(3))
    assert torch.equal(a.obs, b.obs) and a.terminated.dtype == torch.bool


def test_add_rollout_flattens_time_major():
    T, N = 3, 2
    ro = Rollout(
        obs=torch.arange(T * N, dtype=torch.float32).reshape(T, N, 1),
        actions=torch.zeros(T, N, 1),
        rewards=torch.arange(T * N, dtype=torch.float32).reshape(T, N),
        terminated=torch.zeros(T, N, dtype=torch.bool),
        truncated=torch.ones(T, N, dtype=torch.bool),
        next_obs=torch.zeros(T, N, 1),
    )
    buf = ReplayBuffer(10, 1, 1)
    buf.add_rollout(ro)
    assert buf.rewards[:6].tolist() == [0, 1, 2, 3, 4, 5] and not buf.terminated.any()


def test_replay_errors():
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0, 3, 1)
    with pytest.raises(ValueError, match="obs_dim"):
        ReplayBuffer(4, 2.5, 1)
    buf = ReplayBuffer(4, 3, 1)
    with pytest.raises(ValueError, match="empty"):
        buf.sample(2)
    with pytest.raises(ValueError, match="actions"):
        buf.add(
            torch.zeros(2, 3), torch.zeros(2, 2), torch.zeros(2), torch.zeros(2, 3), torch.zeros(2, dtype=torch.bool)
        )
    with pytest.raises(TypeError, match="terminated"):
        buf.add(torch.zeros(2, 3), torch.zeros(2, 1), torch.zeros(2), torch.zeros(2, 3), torch.zeros(2))
    _fill(buf, [1.0])
    with pytest.raises(ValueError, match="batch_size"):
        buf.sample(0)
