"""Dynamic loss scaling: multiply the loss by S so small FP16 gradients do not underflow.

Backpropagating ``S * loss`` multiplies every gradient by ``S`` (the chain rule is linear), which lifts
gradient magnitudes from below FP16's smallest subnormal (2**-24) into its representable range. The
gradients are divided by ``S`` in FP32 before the update. If a scaled gradient overflows (inf or
NaN), the step is skipped and ``S`` is multiplied by ``backoff_factor``; after ``growth_interval``
consecutive finite steps ``S`` is multiplied by ``growth_factor``. This is the rule of
``torch.amp.GradScaler`` (and of Micikevicius et al., "Mixed Precision Training", ICLR 2018, Sec. 3.2).

Chapter: "Mixed precision training" (``chapters/mixed_precision.ipynb``).

Glossary
--------
S (scale)        current loss scale
growth_tracker   number of consecutive finite steps since the last change of S
found_inf        whether any unscaled gradient of this step is inf/NaN (the step is skipped)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

_FP32_MAX = torch.finfo(torch.float32).max


class DynamicLossScaler:
    """The loss scale ``S`` and its update rule; same sequence of scales as ``torch.amp.GradScaler``.

    Args:
        init_scale: initial ``S`` (> 0).
        growth_factor: multiply ``S`` by this (> 1) after ``growth_interval`` finite steps.
        backoff_factor: multiply ``S`` by this (in (0, 1)) after a step with inf/NaN gradients.
        growth_interval: number of consecutive finite steps before growing (>= 1).
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ) -> None:
        if not init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale!r}")
        if not growth_factor > 1:
            raise ValueError(f"growth_factor must be > 1, got {growth_factor!r}")
        if not 0 < backoff_factor < 1:
            raise ValueError(f"backoff_factor must be in (0, 1), got {backoff_factor!r}")
        if not isinstance(growth_interval, int) or growth_interval < 1:
            raise ValueError(f"growth_interval must be a positive int, got {growth_interval!r}")
        self.scale = float(torch.tensor(init_scale, dtype=torch.float32))  # GradScaler keeps S in FP32
        self.growth_factor, self.backoff_factor, self.growth_interval = growth_factor, backoff_factor, growth_interval
        self.growth_tracker = 0
        self.skipped_steps = 0

    def update(self, found_inf: bool) -> float:
        """Update ``S`` after a step (``found_inf``: the step had inf/NaN gradients); returns the new ``S``."""
        if not isinstance(found_inf, bool | torch.Tensor):
            raise TypeError(f"found_inf must be a bool, got {type(found_inf).__name__}")
        if bool(found_inf):
            self.scale = float(torch.tensor(self.scale * self.backoff_factor, dtype=torch.float32))
            self.growth_tracker = 0
            self.skipped_steps += 1
        else:
            self.growth_tracker += 1
            if self.growth_tracker == self.growth_interval:
                grown = float(torch.tensor(self.scale * self.growth_factor, dtype=torch.float32))
                if grown <= _FP32_MAX:  # GradScaler does not grow the scale to inf
                    self.scale = grown
                self.growth_tracker = 0
        return self.scale

    def unscale_(self, grads: Iterable[torch.Tensor | None]) -> bool:
        """Divide each gradient by ``S`` in place; return whether any of them is inf/NaN (``found_inf``)."""
        found_inf = False
        inv = 1.0 / self.scale
        for g in grads:
            if g is None:
                continue
            g.mul_(inv)
            found_inf |= not bool(torch.isfinite(g).all())
        return found_inf

    def state_dict(self) -> dict[str, float | int]:
        return {"scale": self.scale, "growth_tracker": self.growth_tracker, "skipped_steps": self.skipped_steps}


def torch_gradscaler_scales(found_infs: list[bool], **kwargs: float) -> list[float]:
    """Scales of ``torch.amp.GradScaler("cpu", **kwargs)`` after each step of an overflow pattern.

    Drives the real GradScaler on a one-parameter model whose gradient is set to inf (``True``) or
    to a finite value (``False``) at each step; the reference for :class:`DynamicLossScaler`.
    """
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.0)
    scaler = torch.amp.GradScaler("cpu", **kwargs)
    scales = []
    for inf in found_infs:
        scaler.scale(p.sum()).backward()
        p.grad.fill_(float("inf") if inf else 1.0)
        scaler.step(opt)  # unscales, finds inf, skips or steps
        scaler.update()
        opt.zero_grad()
        scales.append(scaler.get_scale())
    return scales
