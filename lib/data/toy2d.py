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


def two_moons_log_prob(x: torch.Tensor, noise: float = 0.05, nodes: int = 4096, chunk: int = 1024) -> torch.Tensor:
    """Exact ``log p(x)`` of :func:`two_moons` with the same ``noise``: each point is a uniform angle on one of the
    two (scaled) half circles ``c(theta)``, chosen with probability 1/2, plus ``N(0, noise^2 I)``, so
    ``p(x) = 1/2 sum_moons (1/pi) int_0^pi N(x; c(theta), noise^2 I) dtheta``, a one-dimensional integral along
    each curve, done here by the midpoint rule on ``nodes`` angles per moon (error ``O(nodes^-2)``, largest
    for points near a moon's ends: with 4096 nodes at most 3e-5 nats at ``noise = 0.1`` and 1e-4 at 0.05, and
    below 1e-7 nats averaged over samples). ``x (n, 2)`` -> ``(n,)`` (float64)."""
    if not torch.is_tensor(x) or x.dim() != 2 or x.shape[1] != 2:
        raise ValueError(f"x must be a tensor of shape (n, 2), got {getattr(x, 'shape', type(x))}")
    if not noise > 0:
        raise ValueError(f"noise must be positive (the noiseless moons have no density), got {noise!r}")
    if not isinstance(nodes, int) or nodes < 16:
        raise ValueError(f"nodes must be an int >= 16, got {nodes!r}")
    theta = (torch.arange(nodes, dtype=torch.float64) + 0.5) * (math.pi / nodes)
    upper = torch.stack([torch.cos(theta), torch.sin(theta)], 1)
    lower = torch.stack([1 - torch.cos(theta), 0.5 - torch.sin(theta)], 1)
    shift, scale = torch.tensor([0.5, 0.25], dtype=torch.float64), torch.tensor([0.87, 0.5], dtype=torch.float64)
    curve = (torch.cat([upper, lower]) - shift) / scale  # (2 nodes, 2): both moons, every node weight 1/(2 nodes)
    out = []
    for xc in x.double().split(chunk):
        d2 = torch.cdist(xc, curve, compute_mode="donot_use_mm_for_euclid_dist").pow(2)  # (chunk, 2 nodes)
        log_n = -0.5 * d2 / noise**2 - math.log(2 * math.pi * noise**2)
        out.append(torch.logsumexp(log_n, 1) - math.log(2 * nodes))
    return torch.cat(out)


def checkerboard_log_prob(x: torch.Tensor, squares: int = 4, size: float = 4.0) -> torch.Tensor:
    """Exact ``log p(x)`` of :func:`checkerboard`: ``-log(area of the dark squares)`` on them, ``-inf`` elsewhere.
    ``x (n, 2)`` -> ``(n,)`` (float64)."""
    if not torch.is_tensor(x) or x.dim() != 2 or x.shape[1] != 2:
        raise ValueError(f"x must be a tensor of shape (n, 2), got {getattr(x, 'shape', type(x))}")
    if squares < 2 or squares % 2:
        raise ValueError(f"squares must be an even int >= 2, got {squares!r}")
    cell = size / squares
    ij = torch.floor((x.double() + size / 2) / cell)
    inside = ((ij >= 0) & (ij < squares)).all(1) & (ij.sum(1) % 2 == 0)
    dark_area = (squares * squares // 2) * cell * cell
    return torch.where(inside, -math.log(dark_area), -math.inf).double()
