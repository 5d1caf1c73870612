"""Glow's layers and RealNVP's multi-scale plumbing: ActNorm, the invertible 1x1 convolution (plain and LU),
squeezing and factoring out half of the variables.

Chapter: "Normalizing flows, continuous flows and flow matching" (``chapters/flows.ipynb``).

References: Kingma and Dhariwal, "Glow", 2018 (ActNorm, section 3.1; invertible 1x1 convolution and its LU
parameterisation, section 3.2, table 1); Dinh et al., "Real NVP", 2017 (squeezing and multi-scale, section 3.6).

Glossary
--------
b, log_s     ActNorm's per-channel shift and log-scale: ``y = (x + b) exp(log_s)``, data-dependent init
W            the 1x1 convolution's ``C x C`` matrix; ``log |det| = H W log |det W|``
P, L, U, s   ``W = P L (U + diag(s))``: permutation (fixed), unit lower, strictly upper, ``s = sign exp(log_s)``
squeeze      ``(C, H, W) -> (4C, H/2, W/2)``, a permutation (``logdet = 0``)
Split        passes the first half of the channels through (they are "factored out" to the prior) and
             applies an inner flow to the rest
"""

from __future__ import annotations

import torch
from torch import nn

from lib.flows.base import FlowLayer, check_input


def _spatial(x: torch.Tensor) -> int:
    """Number of positions each channel is applied at: ``H * W`` for images, 1 for vectors."""
    return x[0, 0].numel()


def _view_channels(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-channel ``(C,)`` vector shaped to broadcast against ``x (batch, C, ...)``."""
    return v.view(1, -1, *([1] * (x.dim() - 2)))


class ActNorm(FlowLayer):
    """Per-channel affine ``y = (x + b) exp(log_s)``; on the first training batch ``b`` and ``log_s`` are set
    so that ``y`` has zero mean and unit variance per channel (Glow's data-dependent initialisation)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        self.b = nn.Parameter(torch.zeros(channels))
        self.log_s = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))

    def _check(self, x: torch.Tensor, name: str) -> None:
        check_input(x, name)
        if x.shape[1] != self.b.numel():
            raise ValueError(f"{name} must have {self.b.numel()} channels on axis 1, got shape {tuple(x.shape)}")

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set ``b = -mean``, ``log_s = -log std`` per channel from the batch ``x``."""
        self._check(x, "x")
        xc = x.transpose(0, 1).reshape(x.shape[1], -1)  # (C, batch * spatial)
        self.b.copy_(-xc.mean(1).to(self.b.dtype))
        self.log_s.copy_(-torch.log(xc.std(1).clamp_min(1e-6)).to(self.log_s.dtype))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x, "x")
        if self.training and not bool(self.initialized) and x.shape[0] > 1:
            self.initialize(x)
        b, log_s = self.b.to(x.dtype), self.log_s.to(x.dtype)
        y = (x + _view_channels(b, x)) * torch.exp(_view_channels(log_s, x))
        return y, (log_s.sum() * _spatial(x)).expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y, "y")
        b, log_s = self.b.to(y.dtype), self.log_s.to(y.dtype)
        return y * torch.exp(-_view_channels(log_s, y)) - _view_channels(b, y)


class InvConv1x1(FlowLayer):
    """Glow's invertible 1x1 convolution: ``y[:, :, i, j] = W x[:, :, i, j]`` (or ``y = W x`` for vectors).

    Args:
        channels: ``C``.
        lu: parameterise ``W = P L (U + diag(s))`` (``log |det W| = sum log|s|``, ``O(C)``) instead of ``W``
            itself (``slogdet``, ``O(C^3)``).
        weight: an initial ``(C, C)`` matrix (default: a random rotation from a QR decomposition); a singular
            or non-finite one raises ``ValueError``.
        generator: for the random rotation.
    """

    def __init__(
        self,
        channels: int,
        lu: bool = True,
        weight: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        if weight is None:
            q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator, dtype=torch.float64))
            weight = q
        if not torch.is_tensor(weight) or weight.shape != (channels, channels):
            raise ValueError(
                f"weight must be a ({channels}, {channels}) tensor, got {getattr(weight, 'shape', weight)}"
            )
        w64 = weight.detach().double()
        if not bool(torch.isfinite(w64).all()):
            raise ValueError("weight has non-finite entries")
        sv = torch.linalg.svdvals(w64)
        tol = 10 * channels * torch.finfo(weight.dtype if weight.is_floating_point() else torch.float32).eps
        if float(sv.min()) <= tol * max(float(sv.max()), 1e-300):  # numerically singular at weight's precision
            raise ValueError(f"weight is singular (smallest singular value {float(sv.min()):.3g}): not invertible")
        self.lu = lu
        if lu:
            P, L, U = torch.linalg.lu(w64)
            s = torch.diagonal(U)
            self.register_buffer("P", P.float())
            self.register_buffer("sign_s", torch.sign(s).float())
            self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
            self.L = nn.Parameter(L.float())
            self.U = nn.Parameter(torch.triu(U, 1).float())
            self.log_s = nn.Parameter(torch.log(s.abs()).float())
        else:
            self.weight = nn.Parameter(w64.float())

    def matrix(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W, log |det W|)`` in ``dtype``."""
        if self.lu:
            eye = torch.eye(self.P.shape[0], dtype=dtype, device=self.P.device)
            L = self.L.to(dtype) * self.lower_mask.to(dtype) + eye
            U = torch.triu(self.U.to(dtype), 1) + torch.diag(self.sign_s.to(dtype) * torch.exp(self.log_s.to(dtype)))
            return self.P.to(dtype) @ L @ U, self.log_s.to(dtype).sum()
        w = self.weight.to(dtype)
        return w, torch.linalg.slogdet(w).logabsdet

    def _mix(self, x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        # x: (batch, C, *spatial); y[:, c] = sum_k W[c, k] x[:, k]
        return torch.einsum("ck,bk...->bc...", W, x)

    def _check(self, x: torch.Tensor, name: str) -> None:
        check_input(x, name)
        channels = self.log_s.numel() if self.lu else self.weight.shape[0]
        if x.shape[1] != channels:
            raise ValueError(f"{name} must have {channels} channels on axis 1, got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x, "x")
        W, logdet = self.matrix(x.dtype)
        return self._mix(x, W), (logdet * _spatial(x)).expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y, "y")
        W, logdet = self.matrix(y.dtype)
        if not bool(torch.isfinite(logdet)):
            raise ValueError("the 1x1 convolution's matrix became singular: cannot invert")
        return self._mix(y, torch.linalg.inv(W))


class Squeeze(FlowLayer):
    """``(batch, C, H, W) -> (batch, 4C, H/2, W/2)``: each 2x2 block of pixels becomes 4 channels."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(x, min_dim=4)
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"x must have even height and width to squeeze, got {tuple(x.shape)}")
        y = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)
        return y, torch.zeros(b, dtype=x.dtype, device=x.device)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        check_input(y, "y", min_dim=4)
        b, c4, h, w = y.shape
        if c4 % 4:
            raise ValueError(f"y must have a multiple of 4 channels to unsqueeze, got {tuple(y.shape)}")
        c = c4 // 4
        return y.reshape(b, c, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c, 2 * h, 2 * w)


class Unsqueeze(FlowLayer):
    """The inverse of :class:`Squeeze` as a layer (to return to the outer shape after an inner flow)."""

    def __init__(self) -> None:
        super().__init__()
        self.squeeze = Squeeze()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.squeeze.inverse(x), torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self.squeeze(y)[0]


class Split(FlowLayer):
    """Multi-scale step: the first ``keep`` channels are final (factored out to the prior, identity here) and
    ``inner`` (a shape-preserving flow) transforms the remaining ones."""

    def __init__(self, keep: int, inner: FlowLayer) -> None:
        super().__init__()
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be a positive int, got {keep!r}")
        if not isinstance(inner, FlowLayer):
            raise TypeError(f"inner must be a FlowLayer, got {type(inner).__name__}")
        self.keep, self.inner = keep, inner

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input(x)
        if x.shape[1] <= self.keep:
            raise ValueError(f"x needs more than keep={self.keep} channels, got {tuple(x.shape)}")
        z, rest = x[:, : self.keep], x[:, self.keep :]
        y, logdet = self.inner(rest)
        return torch.cat([z, y], 1), logdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        check_input(y, "y")
        return torch.cat([y[:, : self.keep], self.inner.inverse(y[:, self.keep :])], 1)
