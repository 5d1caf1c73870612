"""Coupling layers: NICE's additive and RealNVP's affine coupling, with the masks and conditioners they use.

Chapter: "Normalizing flows, continuous flows and flow matching" (``chapters/flows.ipynb``).

References: Dinh, Krueger and Bengio, "NICE", 2015 (additive coupling, eq. 4); Dinh, Sohl-Dickstein and
Bengio, "Density estimation using Real NVP", 2017 (affine coupling, eqs. 6-8; checkerboard and channel masks,
section 3.4).

Glossary
--------
m            binary mask, 1 on the entries that pass unchanged (``x_a``), 0 on those transformed (``x_b``)
s, t         log-scale and shift, functions of ``m * x`` only, so the Jacobian is triangular
y            ``m x + (1 - m) (x exp(s) + t)``; ``log |det dy/dx| = sum (1 - m) s``
"""

from __future__ import annotations

import torch
from torch import nn

from lib.flows.base import FlowLayer, check_input


def alternating_mask(dim: int, parity: int) -> torch.Tensor:
    """``(dim,)`` mask with ones on the even (``parity=0``) or odd (``parity=1``) coordinates."""
    if not isinstance(dim, int) or dim < 2:
        raise ValueError(f"dim must be an int >= 2, got {dim!r}")
    if parity not in (0, 1):
        raise ValueError(f"parity must be 0 or 1, got {parity!r}")
    return ((torch.arange(dim) + parity) % 2 == 0).float()


def checkerboard_mask(channels: int, height: int, width: int, parity: int) -> torch.Tensor:
    """``(channels, height, width)`` checkerboard (RealNVP's spatial mask): ones where ``(i + j + parity)`` is
    even."""
    if min(channels, height, width) < 1:
        raise ValueError("channels, height and width must be >= 1")
    if parity not in (0, 1):
        raise ValueError(f"parity must be 0 or 1, got {parity!r}")
    i, j = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return ((i + j + parity) % 2 == 0).float().expand(channels, height, width).clone()


def channel_mask(channels: int, height: int, width: int, parity: int) -> torch.Tensor:
    """``(channels, height, width)`` mask with ones on the first (``parity=0``) or second half of channels."""
    if channels < 2 or channels % 2:
        raise ValueError(f"channels must be an even int >= 2, got {channels!r}")
    if parity not in (0, 1):
        raise ValueError(f"parity must be 0 or 1, got {parity!r}")
    m = torch.zeros(channels, height, width)
    half = channels // 2
    m[:half] = 1.0 if parity == 0 else 0.0
    m[half:] = 0.0 if parity == 0 else 1.0
    return m


class MLPConditioner(nn.Module):
    """``(batch, dim) -> (batch, out_mult * dim)``: ``layers`` hidden layers of width ``hidden`` (SiLU); the last
    layer starts at zero so a fresh coupling is the identity."""

    def __init__(self, dim: int, hidden: int, layers: int = 2, out_mult: int = 2) -> None:
        super().__init__()
        if min(dim, hidden, layers, out_mult) < 1:
            raise ValueError("dim, hidden, layers and out_mult must be >= 1")
        mods: list[nn.Module] = [nn.Linear(dim, hidden), nn.SiLU()]
        for _ in range(layers - 1):
            mods += [nn.Linear(hidden, hidden), nn.SiLU()]
        last = nn.Linear(hidden, out_mult * dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*mods, last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNNConditioner(nn.Module):
    """``(batch, C, H, W) -> (batch, out_mult * C, H, W)``: conv3x3 - conv1x1 - conv3x3 (ReLU), zero last layer
    (Glow's conditioner, smaller)."""

    def __init__(self, channels: int, hidden: int, out_mult: int = 2) -> None:
        super().__init__()
        if min(channels, hidden, out_mult) < 1:
            raise ValueError("channels, hidden and out_mult must be >= 1")
        last = nn.Conv2d(hidden, out_mult * channels, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU(), last
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AdditiveCoupling(FlowLayer):
    """NICE: ``y = x + (1 - m) t(m x)``; volume preserving (``logdet = 0``)."""

    def __init__(self, mask: torch.Tensor, conditioner: nn.Module) -> None:
        super().__init__()
        _check_mask(mask)
        self.register_buffer("mask", mask.float())
        self.conditioner = conditioner

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(x)
        m = self.mask.to(x.dtype)
        t = self.conditioner(x * m) * (1 - m)  # (batch, *event)
        return x + t, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        check_input(y, "y")
        m = self.mask.to(y.dtype)
        return y - self.conditioner(y * m) * (1 - m)


class AffineCoupling(FlowLayer):
    """RealNVP: ``y = m x + (1 - m) (x exp(s) + t)`` with ``(s, t) = NN(m x)`` and ``s = scale tanh(raw)``
    (bounded log-scale, a learned ``scale`` per entry); ``logdet = sum (1 - m) s``."""

    def __init__(self, mask: torch.Tensor, conditioner: nn.Module) -> None:
        super().__init__()
        _check_mask(mask)
        self.register_buffer("mask", mask.float())
        self.conditioner = conditioner
        self.scale = nn.Parameter(torch.ones_like(mask.float()))

    def _s_t(self, xa: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw_s, t = self.conditioner(xa).chunk(2, dim=1)  # each (batch, *event)
        s = self.scale.to(xa.dtype) * torch.tanh(raw_s) * (1 - m)
        return s, t * (1 - m)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(x)
        m = self.mask.to(x.dtype)
        s, t = self._s_t(x * m, m)
        return x * torch.exp(s) + t, s.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        check_input(y, "y")
        m = self.mask.to(y.dtype)
        s, t = self._s_t(y * m, m)  # y * m == x * m: the conditioner sees the same input
        return (y - t) * torch.exp(-s)


def _check_mask(mask: torch.Tensor) -> None:
    if not torch.is_tensor(mask):
        raise TypeError(f"mask must be a tensor, got {type(mask).__name__}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must contain only zeros and ones")
    if bool((mask == 1).all()) or bool((mask == 0).all()):
        raise ValueError("mask must contain both zeros and ones (else the coupling does nothing or is not invertible)")
