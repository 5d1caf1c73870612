"""Guidance with exact scores: labelled Gaussian mixtures, the closed-form noisy classifier, guided denoisers, and
the tilted density that guidance is often said to sample, normalised on a grid.

Chapter: "Guidance" (``chapters/guidance.ipynb``): Bayes' rule on scores checked to float64 precision, and the
measured gap between guided samples and the tilted density.

Every class of a labelled mixture is itself a mixture (its components, weights renormalised), so the noised
class-conditional ``p_t(x | y)``, the noised marginal ``p_t(x)`` and the noisy classifier
``p_t(y | x) = p(y) p_t(x | y) / p_t(x)`` are all closed form (:mod:`lib.diffusion.score`).

References: Sohl-Dickstein et al. 2015 and Song et al., ICLR 2021 (conditional scores by Bayes' rule); Dhariwal and
Nichol, "Diffusion Models Beat GANs on Image Synthesis", 2021 (classifier guidance, eps form, scale gamma); Ho and
Salimans, "Classifier-Free Diffusion Guidance", 2022; Kynkaanniemi et al., "Applying Guidance in a Limited Interval
Improves Sample and Distribution Quality in Diffusion Models", 2024; Karras et al., "Guiding a Diffusion Model with a
Bad Version of Itself", 2024 (autoguidance); Chidambaram et al. 2024 and Bradley and Nakkiran 2024 (guided samples
are not the tilted density).

Glossary (``x_t = alpha x_0 + sigma eps``; component ``k`` has label ``c_k``)
--------
r_k              responsibility of component ``k`` for ``x_t`` under ``p_t``; ``r_k^y`` the same within class ``y``
g_k              ``grad log N(x_t; alpha m_k, C_k(t)) = -C_k(t)^{-1} (x_t - alpha m_k)``
grad log p_t(y|x)  ``sum_k (r_k^y - r_k) g_k``: the noisy classifier's gradient, closed form
gamma (scale)    guidance scale ``s = 1 + w``: the guided eps is ``eps_ref + gamma (eps_cond - eps_ref)``
tilted density   ``p(x | y)^gamma p(x)^(1 - gamma) / Z`` at ``t = 0``, normalised numerically on a grid
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from lib.data.toy2d import check_mixture, mixture_log_prob
from lib.diffusion.guidance import check_scale, combine
from lib.diffusion.predictions import Denoiser
from lib.diffusion.schedules import Schedule
from lib.diffusion.score import _gmm_marginal, gmm_denoiser, gmm_logp, gmm_score


@dataclass(frozen=True)
class LabelledMixture:
    """``p(x) = sum_k w_k N(x; m_k, C_k)`` whose component ``k`` belongs to class ``labels[k]``."""

    weights: torch.Tensor
    """``(K,)`` non-negative, summing to 1."""
    means: torch.Tensor
    """``(K, d)``."""
    covs: torch.Tensor
    """``(K, d, d)`` symmetric positive definite."""
    labels: torch.Tensor
    """``(K,)`` integer class of each component; every class ``0..C-1`` appears."""

    def __post_init__(self) -> None:
        check_mixture(self.weights, self.means, self.covs)
        lab = self.labels
        if not torch.is_tensor(lab) or lab.shape != self.weights.shape or lab.is_floating_point():
            raise ValueError(f"labels must be an integer tensor of shape {tuple(self.weights.shape)}")
        if int(lab.min()) != 0 or set(lab.tolist()) != set(range(int(lab.max()) + 1)):
            raise ValueError(f"labels must use every class 0..C-1, got {sorted(set(lab.tolist()))}")

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1

    def class_prior(self) -> torch.Tensor:
        """``p(y)``, shape ``(C,)``."""
        return torch.zeros(self.num_classes, dtype=self.weights.dtype).index_add_(0, self.labels, self.weights)

    def component_set(self, y: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(weights, means, covs)`` of ``p(x | y)`` (class ``y``'s components, weights renormalised), or of
        ``p(x)`` for ``y=None``."""
        if y is None:
            return self.weights, self.means, self.covs
        check_label(y, self.num_classes)
        keep = self.labels == y
        w = self.weights[keep]
        return w / w.sum(), self.means[keep], self.covs[keep]

    def sample(self, n: int, y: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(n, d)`` samples of ``p(x | y)`` (or of ``p(x)`` for ``y=None``)."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        w, m, c = self.component_set(y)
        k = torch.multinomial(w.double(), n, replacement=True, generator=generator)
        z = torch.randn(n, m.shape[1], generator=generator, dtype=m.dtype)
        return m[k] + (torch.linalg.cholesky(c)[k] @ z[:, :, None])[:, :, 0]

    def log_prob(self, x: torch.Tensor, y: int | None = None) -> torch.Tensor:
        """``log p(x | y)`` (or ``log p(x)``) at ``t = 0``; ``x (n, d)`` -> ``(n,)``."""
        return mixture_log_prob(x, *self.component_set(y))


def check_label(y: object, num_classes: int) -> None:
    """Raise unless ``y`` is an int class index in ``[0, num_classes)``."""
    if isinstance(y, bool) or not isinstance(y, int):
        raise TypeError(f"y must be an int class index, got {type(y).__name__}")
    if not 0 <= y < num_classes:
        raise ValueError(f"y must be a class in [0, {num_classes}), got {y}")


# --- the noisy classifier, closed form -------------------------------------------------------------------


def class_log_posterior(x: torch.Tensor, t: float | torch.Tensor, sde: Schedule, mix: LabelledMixture) -> torch.Tensor:
    """``log p_t(y | x)`` for every class: ``log p(y) + log p_t(x | y) - log p_t(x)``; ``x (n, d)`` -> ``(n, C)``."""
    log_marg = gmm_logp(x, t, sde, *mix.component_set(None))
    prior = mix.class_prior().to(x)
    per_class = [torch.log(prior[y]) + gmm_logp(x, t, sde, *mix.component_set(y)) for y in range(mix.num_classes)]
    return torch.stack(per_class, 1) - log_marg[:, None]


def classifier_grad(
    x: torch.Tensor, t: float | torch.Tensor, sde: Schedule, mix: LabelledMixture, y: int
) -> torch.Tensor:
    """``grad_x log p_t(y | x) = sum_k (r_k^y - r_k) g_k`` in closed form (no autograd); ``(n, d)``."""
    check_label(y, mix.num_classes)
    logwN, sol = _gmm_marginal(x, t, sde, mix.weights, mix.means, mix.covs)  # sol = C_k(t)^{-1} (x - alpha m_k)
    r = torch.softmax(logwN, 1)  # (n, K)
    in_y = (mix.labels == y).to(x.device)
    r_y = torch.softmax(logwN.masked_fill(~in_y, -math.inf), 1)  # responsibilities within class y
    return -((r_y - r)[..., None] * sol).sum(1)


def class_score(
    x: torch.Tensor, t: float | torch.Tensor, sde: Schedule, mix: LabelledMixture, y: int | None
) -> torch.Tensor:
    """``grad_x log p_t(x | y)`` (``y=None``: ``grad_x log p_t(x)``) from class ``y``'s own mixture; ``(n, d)``."""
    return gmm_score(x, t, sde, *mix.component_set(y))


def class_denoiser(sde: Schedule, mix: LabelledMixture, y: int | None = None, prediction: str = "eps") -> Denoiser:
    """The exact denoiser of ``p_t(x | y)`` (of ``p_t(x)`` for ``y=None``): a perfectly trained model."""
    return gmm_denoiser(sde, *mix.component_set(y), prediction=prediction)


# --- guided denoisers -------------------------------------------------------------------------------------


class MixtureClassifier(torch.nn.Module):
    """The exact classifier as a module: ``(x_t (n, d), t (n,)) -> log p_t(y | x_t)`` for every class, ``(n, C)``:
    logits whose softmax is the posterior, so :func:`lib.diffusion.classifier.classifier_guided_denoiser` guides
    with it as with a trained network. ``at_time``: evaluate the posterior at that fixed time whatever ``t`` is
    (``at_time=0``: a classifier of clean data applied to noisy inputs, the mistake the noisy classifier avoids)."""

    def __init__(self, sde: Schedule, mix: LabelledMixture, at_time: float | None = None) -> None:
        super().__init__()
        if at_time is not None and not 0 <= at_time <= 1:
            raise ValueError(f"at_time must be None or in [0, 1], got {at_time!r}")
        self.sde, self.mix, self.at_time = sde, mix, at_time
        self.config = SimpleNamespace(num_classes=mix.num_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return class_log_posterior(x, t if self.at_time is None else self.at_time, self.sde, self.mix)


def guided(cond: Denoiser, ref: Denoiser, scale: float) -> Denoiser:
    """``ref + scale (cond - ref)`` in the denoisers' common prediction space (affine, so any space gives the same
    sampler): ``ref`` is the unconditional model (classifier-free guidance, ``scale = s = 1 + w``), a negative
    condition, or a weaker model of the same condition (autoguidance)."""
    s = check_scale("scale", scale)
    if not isinstance(cond, Denoiser) or not isinstance(ref, Denoiser):
        raise TypeError("cond and ref must be lib.diffusion.predictions.Denoiser instances")
    if cond.prediction != ref.prediction:
        raise ValueError(f"cond and ref must predict the same thing, got {cond.prediction!r} and {ref.prediction!r}")
    return Denoiser(lambda x, t: combine(cond(x, t), ref(x, t), scale=s), cond.prediction)


# --- the tilted density on a grid ------------------------------------------------------------------------


def tilted_log_density(x: torch.Tensor, mix: LabelledMixture, y: int, gamma: float) -> torch.Tensor:
    """Unnormalised ``gamma log p(x | y) + (1 - gamma) log p(x)`` at ``t = 0``; ``x (n, d)`` -> ``(n,)``."""
    g = check_scale("gamma", gamma)
    return g * mix.log_prob(x, y) + (1 - g) * mix.log_prob(x)


def grid_mass(log_density: torch.Tensor) -> torch.Tensor:
    """Normalised cell masses ``p_i / sum_j p_j`` of a density evaluated at the centres of equal cells."""
    return torch.softmax(log_density.flatten().double(), 0).reshape(log_density.shape)


def sample_grid(
    centres: torch.Tensor, mass: torch.Tensor, spacing: float, n: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``n`` exact-up-to-the-grid samples of a density given as ``mass (N,)`` on cells of side ``spacing`` centred
    at ``centres (N, d)``: a cell by its mass, then a uniform point in it. Returns ``(n, d)``."""
    if centres.dim() != 2 or mass.shape != centres.shape[:1]:
        raise ValueError(f"centres must be (N, d) and mass (N,), got {tuple(centres.shape)}, {tuple(mass.shape)}")
    idx = torch.multinomial(mass.double(), n, replacement=True, generator=generator)
    u = torch.rand(n, centres.shape[1], generator=generator, dtype=centres.dtype) - 0.5
    return centres[idx] + spacing * u


def noised_density_1d(grid: torch.Tensor, density: torch.Tensor, sde: Schedule, t: float) -> torch.Tensor:
    """The density of ``alpha X + sigma Z`` on ``grid (G,)`` for ``X`` with ``density (G,)`` on the same grid, by
    quadrature: ``p_t(x) = int N(x; alpha x0, sigma^2) p(x0) dx0``. Needs ``sigma(t)`` well above the spacing."""
    if grid.dim() != 1 or density.shape != grid.shape:
        raise ValueError("grid and density must be 1-D tensors of equal length")
    tt = torch.tensor([float(t)], dtype=grid.dtype)
    a, s = float(sde.alpha(tt)), float(sde.sigma(tt))
    kernel = torch.exp(-0.5 * ((grid[:, None] - a * grid[None, :]) / s) ** 2) / (s * math.sqrt(2 * math.pi))
    return torch.trapezoid(kernel * density[None, :], grid, dim=1)


def ks_1d(samples: torch.Tensor, grid: torch.Tensor, cdf: torch.Tensor) -> float:
    """Kolmogorov-Smirnov distance ``sup |F_n - F|`` between 1-D ``samples`` and a CDF tabulated on ``grid``
    (linear interpolation between grid points)."""
    if samples.dim() != 1 or grid.dim() != 1 or cdf.shape != grid.shape:
        raise ValueError("samples, grid and cdf must be 1-D, grid and cdf of equal length")
    xs = samples.double().sort().values
    n = xs.shape[0]
    g, c = grid.double(), cdf.double()
    i = torch.searchsorted(g, xs).clamp(1, len(g) - 1)
    lam = ((xs - g[i - 1]) / (g[i] - g[i - 1])).clamp(0, 1)
    F = c[i - 1] + lam * (c[i] - c[i - 1])
    k = torch.arange(1, n + 1, dtype=torch.float64)
    return float(torch.maximum(k / n - F, F - (k - 1) / n).max())
