"""A normalizing flow as a model: the change of variables with a standard-normal prior, sampling by the
inverse, and the two architectures of the chapter (RealNVP for 2D data, a small Glow for 8x8 digits).

Chapter: "Normalizing flows, continuous flows and flow matching" (``chapters/flows.ipynb``).

References: Rezende and Mohamed, "Variational inference with normalizing flows", 2015; Dinh et al., "Real NVP",
2017; Kingma and Dhariwal, "Glow", 2018.

Glossary
--------
f            the flow, data ``x`` -> latent ``z`` (``FlowLayer``)
log p(x)     ``log N(f(x); 0, I) + log |det df/dx|`` (the change of variables)
sample       ``f^{-1}(z)``, ``z ~ N(0, I)``
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lib.flows.base import FlowLayer, FlowSequential, check_input
from lib.flows.coupling import (
    AdditiveCoupling,
    AffineCoupling,
    CNNConditioner,
    MLPConditioner,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
)
from lib.flows.layers import ActNorm, InvConv1x1, Split, Squeeze, Unsqueeze


def standard_normal_logp(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` summed over all but the batch axis: ``(batch, ...) -> (batch,)``."""
    zf = z.flatten(1)
    return -0.5 * (zf.pow(2).sum(1) + zf.shape[1] * math.log(2 * math.pi))


class NormalizingFlow(nn.Module):
    """``p(x) = N(f(x); 0, I) |det df/dx|`` for a :class:`~lib.flows.base.FlowLayer` ``f`` on events of shape
    ``event_shape``."""

    def __init__(self, flow: FlowLayer, event_shape: tuple[int, ...]) -> None:
        super().__init__()
        if not isinstance(flow, FlowLayer):
            raise TypeError(f"flow must be a FlowLayer, got {type(flow).__name__}")
        self.flow, self.event_shape = flow, tuple(event_shape)

    def _check(self, x: torch.Tensor) -> None:
        check_input(x)
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x must have shape (batch, {self.event_shape}), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, logdet)``."""
        self._check(x)
        return self.flow(x)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` in nats, ``(batch,)``."""
        z, logdet = self(x)
        return standard_normal_logp(z) + logdet

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """``n`` samples ``f^{-1}(temperature * z)``."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        p = next(self.parameters())
        z = torch.randn(n, *self.event_shape, generator=generator, dtype=p.dtype).to(p.device)
        return self.flow.inverse(temperature * z)


@dataclass(frozen=True)
class RealNVPConfig:
    """RealNVP for vectors: ``couplings`` affine (or additive) couplings with alternating masks, each with an
    MLP conditioner, and an ActNorm after each coupling."""

    dim: int = 2
    """Data dimension."""
    couplings: int = 8
    """Number of coupling layers (alternating which half is transformed)."""
    hidden: int = 64
    """Width of each conditioner MLP."""
    layers: int = 2
    """Hidden layers of each conditioner MLP."""
    additive: bool = False
    """NICE's additive couplings instead of affine ones."""
    actnorm: bool = True
    """An ActNorm after each coupling."""


def build_realnvp(config: RealNVPConfig | None = None) -> NormalizingFlow:
    """A :class:`NormalizingFlow` for ``(batch, dim)`` data from a :class:`RealNVPConfig`."""
    c = config or RealNVPConfig()
    if c.dim < 2 or c.couplings < 1:
        raise ValueError(f"need dim >= 2 and couplings >= 1, got {c}")
    layers: list[FlowLayer] = []
    for k in range(c.couplings):
        mask = alternating_mask(c.dim, k % 2)
        if c.additive:
            layers.append(AdditiveCoupling(mask, MLPConditioner(c.dim, c.hidden, c.layers, out_mult=1)))
        else:
            layers.append(AffineCoupling(mask, MLPConditioner(c.dim, c.hidden, c.layers)))
        if c.actnorm:
            layers.append(ActNorm(c.dim))
    return NormalizingFlow(FlowSequential(*layers), (c.dim,))


@dataclass(frozen=True)
class GlowConfig:
    """A two-scale Glow/RealNVP for ``(1, 8, 8)`` images: ``checker`` checkerboard affine couplings at full
    resolution, squeeze to ``(4, 4, 4)``, ``steps`` Glow steps (ActNorm, 1x1 conv, channel-mask affine coupling),
    factor out 2 channels, squeeze the other 2 to ``(8, 2, 2)``, ``steps`` more Glow steps."""

    checker: int = 2
    """Checkerboard couplings at 8x8 (one channel: a channel mask is impossible there)."""
    steps: int = 4
    """Glow steps per scale."""
    hidden: int = 64
    """Channels of each CNN conditioner."""
    lu: bool = True
    """LU-parameterised 1x1 convolutions."""


def _glow_steps(channels: int, size: int, steps: int, hidden: int, lu: bool) -> list[FlowLayer]:
    out: list[FlowLayer] = []
    for k in range(steps):
        out += [
            ActNorm(channels),
            InvConv1x1(channels, lu=lu),
            AffineCoupling(channel_mask(channels, size, size, k % 2), CNNConditioner(channels, hidden)),
        ]
    return out


def build_glow(config: GlowConfig | None = None) -> NormalizingFlow:
    """A :class:`NormalizingFlow` for ``(batch, 1, 8, 8)`` images from a :class:`GlowConfig` (the 1x1
    convolutions' initial rotations come from torch's global generator: seed first)."""
    c = config or GlowConfig()
    if c.steps < 1 or c.checker < 0 or c.hidden < 1:
        raise ValueError(f"need steps >= 1, checker >= 0, hidden >= 1, got {c}")
    layers: list[FlowLayer] = []
    for k in range(c.checker):
        layers += [ActNorm(1), AffineCoupling(checkerboard_mask(1, 8, 8, k % 2), CNNConditioner(1, c.hidden))]
    layers.append(Squeeze())  # (4, 4, 4)
    layers += _glow_steps(4, 4, c.steps, c.hidden, c.lu)
    inner = FlowSequential(Squeeze(), *_glow_steps(8, 2, c.steps, c.hidden, c.lu), Unsqueeze())  # on (2, 4, 4)
    layers.append(Split(2, inner))
    layers.append(Unsqueeze())  # back to (1, 8, 8): z has the data's shape
    return NormalizingFlow(FlowSequential(*layers), (1, 8, 8))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
