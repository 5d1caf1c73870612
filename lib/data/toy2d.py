"""Generated 2D densities for generative-model chapters: Gaussian mixtures, two moons, a checkerboard.

Chapter: "Diffusion as stochastic differential equations" (also used by the flows and guidance chapters).
Everything is sampled from an explicit ``torch.Generator``; the Gaussian mixture also has an exact
``log_prob`` (the diffusion chapter needs its score in closed form, see ``lib.diffusion.score.gmm_score``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GaussianMixture:
    """``p(x) = sum_k w_k N(x; m_k, C_k)`` in ``d`` dimensions."""

    weights: torch.Tensor
    """``(K,)`` non-negative, summing to 1."""
    means: torch.Tensor
    """``(K, d)``."""
    covs: torch.Tensor
    """``(K, d, d)`` symmetric positive definite."""

    def __post_init__(self) -> None:
        check_mixture(self.weights, self.means, self.covs)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(n, d)`` samples (float dtype of ``means``)."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        k = torch.multinomial(self.weights.double(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype)
        L = torch.linalg.cholesky(self.covs)  # (K, d, d)
        return self.means[k] + (L[k] @ z[:, :, None])[:, :, 0]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` for ``x`` of shape ``(n, d)``; returns ``(n,)``."""
        return mixture_log_prob(x, self.weights, self.means, self.covs)


def check_mixture(weights: torch.Tensor, means: torch.Tensor, covs: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``weights (K,)``, ``means (K, d)``, ``covs (K, d, d)`` fit together."""
    for name, v in (("weights", weights), ("means", means), ("covs", covs)):
        if not torch.is_tensor(v):
            raise TypeError(f"{name} must be a tensor, got {type(v).__name__}")
    if means.dim() != 2:
        raise ValueError(f"means must have shape (K, d), got {tuple(means.shape)}")
    K, d = means.shape
    if weights.shape != (K,):
        raise ValueError(f"weights must have shape ({K},), got {tuple(weights.shape)}")
    if covs.shape != (K, d, d):
        raise ValueError(f"covs must have shape ({K}, {d}, {d}), got {tuple(covs.shape)}")
    if (weights < 0).any() or abs(float(weights.sum()) - 1.0) > 1e-5:
        raise ValueError("weights must be non-negative and sum to 1")


def mixture_log_prob(x: torch.Tensor, weights: torch.Tensor, means: torch.Tensor, covs: torch.Tensor) -> torch.Tensor:
    """``log sum_k w_k N(x; m_k, C_k)``; ``x`` is ``(n, d)`` and ``means``/``covs`` may carry a leading batch
    axis ``(n, K, d)`` / ``(n, K, d, d)`` (one mixture per point). Returns ``(n,)``."""
    diff = x[:, None, :] - means  # (n, K, d)
    L = torch.linalg.cholesky(covs)  # (K | n K, d, d)
    sol = torch.linalg.solve_triangular(L.expand(*diff.shape[:2], -1, -1), diff[..., None], upper=False)[..., 0]
    maha = sol.pow(2).sum(-1)  # (n, K)
    logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)  # (K,) or (n, K)
    d = x.shape[1]
    comp = -0.5 * (maha + logdet + d * math.log(2 * math.pi))
    return torch.logsumexp(comp + torch.log(weights), dim=1)


def ring_mixture(
    n_components: int = 8, radius: float = 4.0, std: float = 0.5, dtype: torch.dtype = torch.float32
) -> GaussianMixture:
    """``n_components`` equal-weight isotropic Gaussians on a circle of ``radius``."""
    if n_components < 1 or radius < 0 or std <= 0:
        raise ValueError("need n_components >= 1, radius >= 0 and std > 0")
    ang = torch.arange(n_components, dtype=dtype) * (2 * math.pi / n_components)
    means = radius * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    covs = (std**2) * torch.eye(2, dtype=dtype).expand(n_components, 2, 2).clone()
    return GaussianMixture(torch.full((n_components,), 1.0 / n_components, dtype=dtype), means, covs)


def two_moons(n: int, noise: float = 0.05, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n, 2)`` points on two interleaved half circles (scikit-learn's layout), centred and scaled to
    roughly unit variance, plus Gaussian ``noise`` (in the scaled units)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    upper = torch.rand(n, generator=generator) < 0.5
    theta = math.pi * torch.rand(n, generator=generator)
    x = torch.where(upper, torch.cos(theta), 1 - torch.cos(theta))
    y = torch.where(upper, torch.sin(theta), 0.5 - torch.sin(theta))
    pts = (torch.stack([x, y], 1) - torch.tensor([0.5, 0.25])) / torch.tensor([0.87, 0.5])
    return pts + noise * torch.randn(n, 2, generator=generator)


def checkerboard(n: int, squares: int = 4, size: float = 4.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n, 2)`` points uniform on the dark squares of a ``squares x squares`` board covering
    ``[-size/2, size/2]^2`` (``squares`` even)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if squares < 2 or squares % 2:
        raise ValueError(f"squares must be an even int >= 2, got {squares!r}")
    cell = size / squares
    i = torch.randint(0, squares, (n,), generator=generator)
    j = torch.randint(0, squares // 2, (n,), generator=generator) * 2 + (i % 2)  # (i + j) even
    u = torch.rand(n, 2, generator=generator)
    return torch.stack([i, j], 1).float() * cell + u * cell - size / 2


def sample_toy(name: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``"moons"``, ``"checkerboard"`` or ``"rings"`` (the 8-Gaussian ring scaled to unit-ish variance)."""
    if name == "moons":
        return two_moons(n, generator=generator)
    if name == "checkerboard":
        return checkerboard(n, generator=generator)
    if name == "rings":
        return ring_mixture(radius=2.0, std=0.15).sample(n, generator)
    raise ValueError(f"name must be 'moons', 'checkerboard' or 'rings', got {name!r}")
