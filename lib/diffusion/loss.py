"""The diffusion training loss for every schedule and prediction: ``t ~ t_sampler``, ``x_t = alpha x_0 + sigma
eps``, regress the model's output (read in the ``target`` space) on the truth, weighted in time; condition
dropout for classifier-free guidance, with the null condition owned by the model.

Chapter: "Diffusion as stochastic differential equations" (``chapters/diffusion_sde.ipynb``); the Flows chapter
(``RectifiedFlow`` + ``"velocity"``: flow matching), Guidance (``p_uncond``), Latent Diffusion (dict batches
with a ``context``) and SD3 (logit-normal ``t_sampler``) chapters use it.

References: Vincent 2011 and Song et al. 2021 (denoising score matching, weighting ``lambda(t)``, likelihood
weighting ``g^2``); Ho et al. 2020 (the "simple" eps loss); Lipman et al. 2023 (flow matching); Ho and
Salimans, "Classifier-Free Diffusion Guidance", 2022 (condition dropout); Esser et al. 2024 (time samplers).

Glossary
--------
prediction   what the model outputs (``eps``, ``x0``, ``v``, ``velocity``, ``score``)
target       the space the error is measured in (default: ``prediction``)
weighting    ``"none"``: plain MSE in the target space; ``"likelihood"`` / ``"score"``: Song et al.'s
             ``lambda = g^2`` / ``lambda = 1`` on the score error, expressed in the target space; or ``w(t)``
eps_scale    ``|d target / d eps|`` at fixed ``x_t``: the factor between a target error and an eps error
p_uncond     probability of replacing a condition by the model's null condition (per key for dict batches)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from lib.diffusion.predictions import check_prediction, convert, from_x0_eps
from lib.diffusion.schedules import Schedule
from lib.diffusion.timesteps import TimeSampler


def eps_scale(t: torch.Tensor, schedule: Schedule, target: str) -> torch.Tensor:
    """``|d target / d eps|`` at fixed ``x_t``: 1 (eps), ``sigma/alpha`` (x0), ``(alpha^2 + sigma^2)/alpha`` (v),
    ``sigma' - sigma alpha'/alpha`` (velocity), ``1/sigma`` (score). An error ``e`` in eps is ``eps_scale * e``
    in the target."""
    check_prediction("target", target)
    a, s = schedule.alpha(t), schedule.sigma(t)
    if target == "eps":
        return torch.ones_like(t)
    if target == "x0":
        return s / a
    if target == "v":
        return (a**2 + s**2) / a
    if target == "velocity":
        return (schedule.d_sigma(t) - s * schedule.d_alpha(t) / a).abs()
    return 1 / s


def split_batch(batch: Any, label_key: str = "y") -> tuple[torch.Tensor, dict[str, Any]]:
    """``x0`` and the conditioning dict of a batch: ``x0``; ``(x0, y)`` -> ``{label_key: y}``; ``{"x": x0, **cond}``."""
    if isinstance(batch, Mapping):
        if "x" not in batch:
            raise ValueError(f"a dict batch needs the key 'x', got keys {list(batch)}")
        x0, cond = batch["x"], {k: v for k, v in batch.items() if k != "x"}
    elif isinstance(batch, (tuple, list)):
        if len(batch) not in (1, 2):
            raise ValueError(f"a tuple batch is (x0,) or (x0, y), got {len(batch)} elements")
        x0, cond = batch[0], ({label_key: batch[1]} if len(batch) == 2 else {})
    else:
        x0, cond = batch, {}
    if not torch.is_tensor(x0) or x0.dim() < 2 or not x0.is_floating_point():
        raise ValueError(f"batch must hold a float x0 of shape (batch, ...), got {getattr(x0, 'shape', type(x0))}")
    return x0, cond


def drop_conditions(
    model: Any, cond: dict[str, Any], p_uncond: float | Mapping[str, float], generator: torch.Generator | None = None
) -> dict[str, Any]:
    """Replace each condition ``k`` by the model's null condition with probability ``p_uncond[k]`` per example
    (a float applies to every key), through ``model.null_condition(cond, drop)`` with boolean masks
    ``drop[k] (batch,)``."""
    probs = {k: p_uncond for k in cond} if not isinstance(p_uncond, Mapping) else dict(p_uncond)
    probs = {k: float(p) for k, p in probs.items() if float(p) > 0 and k in cond}
    if not probs:
        return cond
    if not callable(getattr(model, "null_condition", None)):
        raise TypeError(f"condition dropout needs model.null_condition(cond, drop); {type(model).__name__} has none")
    drop = {}
    for k, p in probs.items():
        n = cond[k].shape[0]
        drop[k] = (torch.rand(n, generator=generator) < p).to(cond[k].device)
    return model.null_condition(cond, drop)


@dataclass(frozen=True, eq=False)
class DiffusionLoss:
    """``loss_fn(model, batch)`` for ``lib.train.train``: per example ``w(t) mean_dims (T_theta - T)^2`` with
    ``T`` the truth in ``target`` and ``T_theta`` the model's output converted to it; the model is called as
    ``model(x_t, t, **cond)``. ``DiffusionLoss(RectifiedFlow(), "velocity")`` is conditional flow matching."""

    schedule: Schedule
    """The noise schedule."""
    prediction: str = "eps"
    """What the model outputs."""
    target: str | None = None
    """Space of the regression (``None``: ``prediction``)."""
    weighting: str | Callable[[torch.Tensor], torch.Tensor] = "none"
    """``"none"``, ``"likelihood"`` (``lambda = g^2``), ``"score"`` (``lambda = 1``) or a callable ``w(t)``."""
    t_sampler: TimeSampler = field(default_factory=TimeSampler)
    """Training-time distribution (default uniform on [1e-3, 1])."""
    p_uncond: float | Mapping[str, float] = 0.0
    """Condition dropout probability, one for all keys or per key (``{"y": 0.1}``, ``{"context": 0.1}``)."""
    label_key: str = "y"
    """Keyword under which an ``(x0, y)`` batch's ``y`` reaches the model."""
    generator: torch.Generator | None = None
    """Source of ``t``, ``eps`` and dropout draws (``None``: torch's global generator)."""

    def __post_init__(self) -> None:
        if not isinstance(self.schedule, Schedule):
            raise TypeError(f"schedule must be a Schedule, got {type(self.schedule).__name__}")
        check_prediction("prediction", self.prediction)
        if self.target is not None:
            check_prediction("target", self.target)
        if not callable(self.weighting) and self.weighting not in ("none", "likelihood", "score"):
            raise ValueError(f"weighting must be 'none', 'likelihood', 'score' or a callable, got {self.weighting!r}")
        if not isinstance(self.t_sampler, TimeSampler):
            raise TypeError(f"t_sampler must be a TimeSampler, got {type(self.t_sampler).__name__}")
        ps = self.p_uncond.values() if isinstance(self.p_uncond, Mapping) else [self.p_uncond]
        if any(not 0 <= float(p) <= 1 for p in ps):
            raise ValueError(f"p_uncond must be in [0, 1], got {self.p_uncond!r}")

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """``w(t)`` multiplying the target-space squared error."""
        if callable(self.weighting):
            return self.weighting(t)
        if self.weighting == "none":
            return torch.ones_like(t)
        lam = self.schedule.g2(t) if self.weighting == "likelihood" else torch.ones_like(t)
        # lambda ||score error||^2 = lambda / sigma^2 ||eps error||^2 = lambda / (sigma eps_scale)^2 ||target error||^2
        return lam / (self.schedule.sigma(t) * eps_scale(t, self.schedule, self.target or self.prediction)) ** 2

    def __call__(self, model: Callable[..., torch.Tensor], batch: Any) -> torch.Tensor:
        x0, cond = split_batch(batch, self.label_key)
        cond = drop_conditions(model, cond, self.p_uncond, self.generator)
        t = self.t_sampler(x0.shape[0], self.generator, device=x0.device, dtype=x0.dtype)
        eps = torch.randn(x0.shape, generator=self.generator, dtype=x0.dtype, device="cpu").to(x0.device)
        x_t, _ = self.schedule.marginal_prob(x0, t)
        x_t = x_t + self.schedule.sigma(t).reshape(-1, *[1] * (x0.dim() - 1)) * eps
        target = self.target or self.prediction
        out = model(x_t, t, **cond)
        pred = out if target == self.prediction else convert(out, x_t, t, self.schedule, self.prediction, target)
        truth = from_x0_eps(x0, eps, x_t, t, self.schedule, target)
        per_example = (pred - truth).pow(2).reshape(x0.shape[0], -1).mean(1)
        return (self.weight(t) * per_example).mean()
