"""Exponential moving average of parameters, the usual companion of diffusion training.

Chapter: "Diffusion as stochastic differential equations". Song et al. (2021) and Ho et al. (2020) sample
from EMA weights (decay 0.999-0.9999); :class:`EMAStep` plugs it into ``lib.train.train`` as ``step_fn``.
"""

from __future__ import annotations

import copy

import torch

from lib.train import OptimizerStep


class EMA:
    """``theta_ema <- decay theta_ema + (1 - decay) theta`` after each step; ``self.model`` is the EMA copy."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.999) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay!r}")
        self.decay, self.source = decay, model
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self) -> None:
        for e, p in zip(self.model.parameters(), self.source.parameters(), strict=True):
            e.lerp_(p.detach(), 1 - self.decay)
        for e, b in zip(self.model.buffers(), self.source.buffers(), strict=True):
            e.copy_(b)


class EMAStep(OptimizerStep):
    """``OptimizerStep`` followed by an :class:`EMA` update (pass as ``train(..., step_fn=EMAStep(...))``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, ema: EMA, grad_clip: float | None = None) -> None:
        super().__init__(optimizer, grad_clip=grad_clip)
        self.ema = ema

    def __call__(self, loss: torch.Tensor) -> dict[str, float]:
        out = super().__call__(loss)
        self.ema.update()
        return out
