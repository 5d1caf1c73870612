"""scikit-learn's 8x8 handwritten digits (1,797 images, shipped inside the package: no download).

Used by the mixed-precision, diffusion and guidance chapters. Pixels (0..16) are scaled to [-1, 1];
the train/test split is fixed (stratified, seed 0) so every chapter sees the same test set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TEST_FRACTION = 0.25
SPLIT_SEED = 0


@dataclass(frozen=True)
class Digits:
    """One split of the digits data."""

    x: torch.Tensor
    """Images, ``(n, 1, 8, 8)`` float32 in [-1, 1]."""
    y: torch.Tensor
    """Labels, ``(n,)`` int64 in 0..9."""

    def __len__(self) -> int:
        return self.x.shape[0]

    def batches(self, batch_size: int, generator: torch.Generator | None = None):
        """Shuffled ``(x, y)`` minibatches, one epoch (use ``generator`` for reproducibility)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        perm = torch.randperm(len(self), generator=generator)
        for i in range(0, len(self), batch_size):
            idx = perm[i : i + batch_size]
            yield self.x[idx], self.y[idx]


def load_digits(split: str = "train") -> Digits:
    """The ``"train"`` (1,347 images) or ``"test"`` (450 images) split, or ``"all"`` (1,797)."""
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    bunch = _load()
    x = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 8.0 - 1.0  # (n, 1, 8, 8)
    y = torch.tensor(bunch.target, dtype=torch.int64)
    if split == "all":
        return Digits(x, y)
    idx_train, idx_test = train_test_split(
        torch.arange(len(y)).numpy(), test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y.numpy()
    )
    idx = torch.as_tensor(idx_train if split == "train" else idx_test)
    return Digits(x[idx], y[idx])
