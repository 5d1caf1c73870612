"""The interface every discrete flow layer follows, their composition, and the float64 Jacobian check.

Chapter: "Normalizing flows, continuous flows and flow matching" (``chapters/flows.ipynb``).

Convention: a layer maps data towards the latent (the *normalising* direction, the direction of the book's
time, data at ``t = 0`` and noise at ``t = 1``). ``forward(x)`` returns ``(y, logdet)`` with
``logdet = log |det dy/dx|`` per example, shape ``(batch,)``; ``inverse(y)`` returns ``x``. The change of
variables is then ``log p_X(x) = log p_Y(f(x)) + log |det df/dx|``.

Glossary
--------
FlowLayer          the base class (``forward`` -> ``(y, logdet)``, ``inverse``)
FlowSequential     a composition; log-dets add up
jacobian_logdet    ``log |det J|`` of any function of one example, by autograd (float64 reference)
"""

from __future__ import annotations

import torch
from torch import nn


def check_input(x: torch.Tensor, name: str = "x", min_dim: int = 2) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``x`` is a finite floating tensor of shape ``(batch, ...)``."""
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have shape (batch, ...) with at least {min_dim} axes, got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} has non-finite entries (nan or inf): a flow cannot map them")


class FlowLayer(nn.Module):
    """An invertible map with a tractable log-determinant."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class FlowSequential(FlowLayer):
    """``f = f_K o ... o f_1``: ``log |det df/dx| = sum_k log |det df_k/dx_{k-1}|``."""

    def __init__(self, *layers: FlowLayer) -> None:
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, FlowLayer):
                raise TypeError(f"layers[{i}] must be a FlowLayer, got {type(layer).__name__}")
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        for layer in reversed(self.layers):
            y = layer.inverse(y)
        return y


def jacobian_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    """``log |det d fn(x_i) / d x_i|`` for each example ``x_i`` of ``x (batch, ...)``, from the full autograd
    Jacobian (``D x D`` per example) and ``torch.linalg.slogdet``: the slow reference for every layer's
    ``logdet``. ``fn`` maps a batch to a batch of the same total size per example. Use float64."""
    check_input(x)
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        J = torch.autograd.functional.jacobian(lambda v: fn(v).reshape(-1), xi).reshape(xi.numel(), xi.numel())
        out.append(torch.linalg.slogdet(J).logabsdet)
    return torch.stack(out)


@torch.no_grad()
def jitter_parameters(module: nn.Module, scale: float, generator: torch.Generator | None = None) -> nn.Module:
    """Add ``scale * N(0, 1)`` to every parameter in place and return ``module``: moves fresh layers (zero-initialised
    conditioners, identity ActNorm) off the identity so that log-det checks test something."""
    if not scale >= 0:
        raise ValueError(f"scale must be >= 0, got {scale!r}")
    for p in module.parameters():
        p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device))
    return module


def logdet_check(layer: FlowLayer, x: torch.Tensor) -> tuple[float, float]:
    """``(max |logdet - autograd slogdet|, max |inverse(forward(x)) - x|)`` for ``layer`` on ``x`` (use float64 and
    an eval-mode layer): the two checks every flow layer must pass."""
    if not isinstance(layer, FlowLayer):
        raise TypeError(f"layer must be a FlowLayer, got {type(layer).__name__}")
    check_input(x)
    y, logdet = layer(x)
    ref = jacobian_logdet(lambda v: layer(v)[0], x)
    with torch.no_grad():
        return float((logdet - ref).abs().max()), float((layer.inverse(y) - x).abs().max())
