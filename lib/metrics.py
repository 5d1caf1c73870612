"""Distances between sample sets for generative models: energy distance, sliced Wasserstein, and a
classifier Frechet distance for the 8x8 digits (FID's recipe with a small digits classifier in place of
Inception).

Chapter: "Diffusion as stochastic differential equations" (reused by the guidance, latent diffusion,
ControlNet and SD3 chapters).

References: Wilson, "Probable inference, the law of succession, and statistical inference", 1927;
Szekely and Rizzo, "Energy statistics", 2013; Rabin, Peyre, Delon and Bernot, "Wasserstein
barycenter and its application to texture mixing", 2011 (sliced Wasserstein); Heusel et al., "GANs trained by
a two time-scale update rule converge to a local Nash equilibrium", 2017 (FID); Dowson and Landau 1982
(Frechet distance between Gaussians).

Glossary
--------
energy distance     ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (squared form, V-statistic: >= 0 always)
sliced W2           ``sqrt(E_theta W2^2(theta^T X, theta^T Y))`` over random unit directions theta
Frechet distance    ``|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a^{1/2} C_b C_a^{1/2})^{1/2})`` of Gaussian fits
DigitsClassifier    small CNN trained on the digits train split; its penultimate layer gives the features
Wilson interval     confidence interval of a binomial proportion ``k / n`` (used for rates of judged samples)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from lib.utils import seed_everything


def _check_sets(x: torch.Tensor, y: torch.Tensor) -> None:
    for name, v in (("x", x), ("y", y)):
        if not torch.is_tensor(v) or v.dim() != 2 or v.shape[0] < 2:
            raise ValueError(f"{name} must be a tensor of shape (n >= 2, d), got {getattr(v, 'shape', type(v))}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")


def _mean_dist(a: torch.Tensor, b: torch.Tensor, chunk: int = 1024) -> float:
    """Mean of ``|a_i - b_j|`` over all pairs, in chunks (float64, exact differences, no matmul trick)."""
    a, b = a.double(), b.double()
    total = torch.zeros((), dtype=torch.float64)
    for i in range(0, a.shape[0], chunk):
        total = total + torch.cdist(a[i : i + chunk], b, compute_mode="donot_use_mm_for_euclid_dist").sum()
    return float(total) / (a.shape[0] * b.shape[0])


def mean_pairwise_distance(x: torch.Tensor) -> float:
    """``E|X - X'|`` over all ``n^2`` ordered pairs of rows of ``x (n, d)`` (diagonal zeros included)."""
    if not torch.is_tensor(x) or x.dim() != 2:
        raise ValueError(f"x must be a tensor of shape (n, d), got {getattr(x, 'shape', type(x))}")
    return 2 * float(torch.nn.functional.pdist(x.double()).sum()) / x.shape[0] ** 2


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval ``(lo, hi)`` of a binomial proportion with ``k`` successes in ``n`` trials (``z = 1.96``:
    95%). Unlike ``k / n +- z se`` it stays inside [0, 1] and is not empty at ``k = 0`` or ``k = n``."""
    if not (isinstance(k, int) and isinstance(n, int) and 0 <= k <= n and n > 0):
        raise ValueError(f"need integers 0 <= k <= n and n > 0, got k={k!r}, n={n!r}")
    if not z > 0:
        raise ValueError(f"z must be positive, got {z!r}")
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * (p * (1 - p) / n + z2 / (4 * n * n)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


def energy_distance(x: torch.Tensor, y: torch.Tensor, y_self: float | None = None) -> float:
    """Squared energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` between sample sets ``x (n, d)`` and
    ``y (m, d)``, as a V-statistic (all pairs, diagonals included): ``>= 0``, and ``~ 2 E|X - X'| / n`` for two
    independent ``n``-sample sets of one distribution. ``y_self``: a precomputed
    ``mean_pairwise_distance(y)`` (saves a third of the work when one target set is compared many times)."""
    _check_sets(x, y)
    y_self = mean_pairwise_distance(y) if y_self is None else y_self
    return 2 * _mean_dist(x, y) - mean_pairwise_distance(x) - y_self


def sliced_wasserstein(
    x: torch.Tensor, y: torch.Tensor, n_projections: int = 256, generator: torch.Generator | None = None
) -> float:
    """Sliced 2-Wasserstein distance over ``n_projections`` random directions (1D W2 by sorting; sets of
    different sizes are compared at common quantile levels)."""
    _check_sets(x, y)
    if not isinstance(n_projections, int) or n_projections < 1:
        raise ValueError(f"n_projections must be a positive int, got {n_projections!r}")
    theta = torch.randn(x.shape[1], n_projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, py = (x.double() @ theta).sort(0).values, (y.double() @ theta).sort(0).values  # (n, P), (m, P)
    if px.shape[0] != py.shape[0]:
        m = min(px.shape[0], py.shape[0])
        q = (torch.arange(m, dtype=torch.float64) + 0.5) / m
        px, py = torch.quantile(px, q, dim=0), torch.quantile(py, q, dim=0)
    return float((px - py).pow(2).mean().sqrt())


def _sqrtm_psd(c: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(c)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(feat_a: torch.Tensor, feat_b: torch.Tensor) -> float:
    """Frechet (2-Wasserstein) distance between Gaussian fits of two feature sets ``(n, k)``, ``(m, k)``."""
    _check_sets(feat_a, feat_b)
    a, b = feat_a.double(), feat_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    ra = _sqrtm_psd(ca)
    cross = _sqrtm_psd(ra @ cb @ ra)
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(ca) + torch.trace(cb) - 2 * torch.trace(cross))


def gaussian_fit_samples(
    x_train: torch.Tensor, n: int, generator: torch.Generator | None = None, jitter: float = 1e-4
) -> torch.Tensor:
    """``n`` samples of the full-covariance Gaussian fitted to ``x_train (m, ...)`` (mean and covariance of the
    flattened data, plus ``jitter I`` for pixels that never vary): the baseline a generative model must beat,
    with every pixel correlation of the data but nothing beyond second order. Returns ``(n, ...)``."""
    if not torch.is_tensor(x_train) or x_train.dim() < 2 or x_train.shape[0] < 2:
        raise ValueError(f"x_train must be a tensor of shape (m >= 2, ...), got {getattr(x_train, 'shape', x_train)}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    flat = x_train.reshape(x_train.shape[0], -1).double()
    mu, cov = flat.mean(0), torch.cov(flat.T) + jitter * torch.eye(flat.shape[1], dtype=torch.float64)
    z = torch.randn(n, flat.shape[1], generator=generator, dtype=torch.float64)
    samples = mu + z @ torch.linalg.cholesky(cov).T
    return samples.to(x_train.dtype).reshape(n, *x_train.shape[1:])


# --- the digits classifier behind the classifier Frechet distance --------------------------------------


@dataclass(frozen=True)
class DigitsClassifierConfig:
    """A small CNN for 8x8 digits."""

    channels: int = 32
    """Channels of the first conv layer (the second has twice as many)."""
    features: int = 64
    """Width of the penultimate layer (the Frechet features)."""
    steps: int = 600
    """Training steps (batch 128, Adam, random one-pixel shifts as augmentation)."""
    lr: float = 2e-3
    """Adam learning rate."""
    seed: int = 0
    """Seed of initialisation and batches."""


class DigitsClassifier(nn.Module):
    """``(n, 1, 8, 8)`` in [-1, 1] -> logits ``(n, 10)``; :meth:`features` gives the penultimate ``(n, k)``."""

    def __init__(self, config: DigitsClassifierConfig | None = None) -> None:
        super().__init__()
        config = config or DigitsClassifierConfig()
        c, k = config.channels, config.features
        self.body = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * c * 16, k), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(k, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1:] != (1, 8, 8):
            raise ValueError(f"x must have shape (n, 1, 8, 8), got {tuple(x.shape)}")
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class TrainedClassifier:
    """A trained :class:`DigitsClassifier` and its accuracy on the digits test split."""

    model: DigitsClassifier
    test_accuracy: float
    seconds: float


def _shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random shifts by -1, 0 or +1 pixel (zero padding at -1), the only augmentation."""
    dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    if dy:
        x[:, :, 0 if dy > 0 else -1, :] = -1.0
    if dx:
        x[:, :, :, 0 if dx > 0 else -1] = -1.0
    return x


def train_digits_classifier(config: DigitsClassifierConfig | None = None) -> TrainedClassifier:
    """Train the digits classifier on the train split through ``lib.train.train`` (CPU: about a minute)."""
    from lib.data.digits import load_digits
    from lib.train import train

    config = config or DigitsClassifierConfig()
    train_set = load_digits("train")
    seed_everything(config.seed, threads=None, deterministic=False)  # model initialisation
    model = DigitsClassifier(config)
    g = torch.Generator().manual_seed(config.seed)

    def batch(step: int):
        idx = torch.randint(0, len(train_set), (128,), generator=g)
        return _shift(train_set.x[idx].clone(), g), train_set.y[idx]

    def loss_fn(m, b):
        return nn.functional.cross_entropy(m(b[0]), b[1])

    hist = train(model, loss_fn, batch, config.steps, lr=config.lr, log_every=50, desc="digits classifier")
    model.eval()
    return TrainedClassifier(model, digits_test_accuracy(model), hist.seconds)


def digits_test_accuracy(model: nn.Module) -> float:
    """Accuracy of ``model`` on the digits test split (450 images)."""
    from lib.data.digits import load_digits

    test_set = load_digits("test")
    with torch.no_grad():
        return float((model(test_set.x).argmax(1) == test_set.y).float().mean())


def load_digits_classifier(path=None) -> TrainedClassifier:
    """The shipped classifier ``weights/digits_classifier.safetensors`` (sha256 verified), with its test
    accuracy measured now."""
    from lib.checkpoint import WEIGHTS_DIR, load_checkpoint

    state, meta = load_checkpoint(path or WEIGHTS_DIR / "digits_classifier.safetensors")
    model = DigitsClassifier(DigitsClassifierConfig(**meta["config"]))
    model.load_state_dict(state)
    model.eval()
    return TrainedClassifier(model, digits_test_accuracy(model), 0.0)


@lru_cache(maxsize=1)
def digits_classifier() -> TrainedClassifier:
    """The classifier behind :func:`classifier_frechet_distance`: the shipped checkpoint when present (the same
    features for every chapter), else trained now with the default config. Cached per process."""
    try:
        return load_digits_classifier()
    except FileNotFoundError:
        return train_digits_classifier()


def classifier_frechet_distance(
    x: torch.Tensor, y: torch.Tensor, classifier: DigitsClassifier | None = None, clip: bool = True
) -> float:
    """Frechet distance between digits classifier features of image sets ``x`` and ``y`` ``(n, 1, 8, 8)``.

    ``classifier`` defaults to :func:`digits_classifier`'s model; ``clip`` clamps images to [-1, 1] first.
    """
    model = classifier if classifier is not None else digits_classifier().model
    with torch.no_grad():
        fx = model.features(x.clamp(-1, 1) if clip else x)
        fy = model.features(y.clamp(-1, 1) if clip else y)
    return frechet_distance(fx, fy)


def main(argv: list[str] | None = None) -> int:
    """``python -m lib.metrics [--out PATH]``: train the digits classifier and save it with provenance."""
    import argparse
    import dataclasses
    import sys

    from lib.checkpoint import WEIGHTS_DIR, save_checkpoint
    from lib.utils import seed_everything

    parser = argparse.ArgumentParser(description="train and save the digits classifier of the Frechet distance")
    parser.add_argument("--out", default=str(WEIGHTS_DIR / "digits_classifier.safetensors"))
    parser.add_argument("--steps", type=int, default=DigitsClassifierConfig.steps)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = DigitsClassifierConfig(steps=args.steps, seed=args.seed)
    seed_everything(config.seed, threads=2)
    trained = train_digits_classifier(config)
    if trained.test_accuracy < 0.97:
        raise SystemExit(f"test accuracy {trained.test_accuracy:.4f} < 0.97: not saved")
    command = "python -m lib.metrics " + " ".join(sys.argv[1:] if argv is None else argv)
    extra = {"test_accuracy": trained.test_accuracy, "train_seconds": trained.seconds}
    path = save_checkpoint(args.out, trained.model.state_dict(), command=command, seed=config.seed,
                           config=dataclasses.asdict(config), extra=extra)  # fmt: skip
    print(f"saved {path} (test accuracy {trained.test_accuracy:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
