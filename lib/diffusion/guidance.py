"""Classifier-free guidance: conditional and unconditional predictions from one batched forward, combined.

Chapter: "Diffusion as stochastic differential equations" (API); the Guidance chapter derives and measures it.

Two conventions for the same combination (``p`` any prediction; all are affine in each other at fixed
``(x_t, t)``, so combining in eps, x0, v, velocity or score space gives the same sampler):

    Ho and Salimans (2022), guidance weight w:        p = (1 + w) p_cond - w p_uncond
    diffusers / Stable Diffusion, guidance scale s:   p = p_uncond + s (p_cond - p_uncond),   s = 1 + w

``w = 0`` (``s = 1``) is the plain conditional model; ``w = -1`` (``s = 0``) the unconditional one.

References: Ho and Salimans, "Classifier-Free Diffusion Guidance", 2022 (eq. 6); Rombach et al. 2022 and the
``diffusers`` pipelines (``guidance_scale``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch

from lib.diffusion.predictions import Denoiser, check_prediction


def check_scale(name: str, value: object) -> float:
    """``value`` as a float if it is a finite real number (not a bool); else ``TypeError``/``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def guidance_scale(w: float | None = None, scale: float | None = None) -> float:
    """The diffusers scale ``s`` from exactly one of Ho and Salimans' ``w`` or ``scale`` (``s = 1 + w``)."""
    if (w is None) == (scale is None):
        raise ValueError(f"give exactly one of w (Ho and Salimans) or scale (diffusers), got w={w!r}, scale={scale!r}")
    return 1.0 + check_scale("w", w) if w is not None else check_scale("scale", scale)


def combine(p_cond: torch.Tensor, p_uncond: torch.Tensor, *, w: float | None = None, scale: float | None = None):
    """``(1 + w) p_cond - w p_uncond`` (``w=``) or ``p_uncond + s (p_cond - p_uncond)`` (``scale=``)."""
    if w is not None and scale is None:
        return (1 + w) * p_cond - w * p_uncond
    return p_uncond + guidance_scale(w, scale) * (p_cond - p_uncond)


def _cat(a: Any, b: Any) -> Any:
    return torch.cat([a, b], 0) if torch.is_tensor(a) else a


def guided_denoiser(
    model: Callable[..., torch.Tensor],
    prediction: str = "eps",
    *,
    w: float | None = None,
    scale: float | None = None,
    **cond: Any,
) -> Denoiser:
    """A :class:`~lib.diffusion.predictions.Denoiser` whose output is the guided combination.

    Each call runs ``model`` once on the doubled batch ``[x, x]`` with conditions ``[cond, null]``, where the
    null half comes from ``model.null_condition(cond, drop=all True)`` (the model owns its null condition).
    """
    check_prediction("prediction", prediction)
    s = guidance_scale(w, scale)
    if not cond:
        raise ValueError("guided_denoiser needs at least one condition (e.g. y=labels or context=tokens)")
    if not callable(getattr(model, "null_condition", None)):
        raise TypeError(f"guidance needs model.null_condition(cond, drop); {type(model).__name__} has none")

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        drop = {k: torch.ones(n, dtype=torch.bool, device=x.device) for k, v in cond.items() if torch.is_tensor(v)}
        null = model.null_condition(cond, drop)
        both = {k: _cat(cond[k], null[k]) for k in cond}
        out = model(torch.cat([x, x], 0), torch.cat([t, t], 0), **both)  # one forward, (2n, ...)
        return combine(out[:n], out[n:], scale=s)

    return Denoiser(guided, prediction)
