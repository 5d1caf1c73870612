"""FP8 training, emulated: per-tensor scaling, delayed scaling, and an FP8 linear layer.

FP8 has too little range for unscaled tensors: E4M3 spans ``2**-9 .. 448`` and E5M2 ``2**-16 .. 57344``.
Every tensor ``x`` is therefore stored as ``q = fl8(x * s)`` with a per-tensor scale ``s`` and used as
``q / s`` (Micikevicius et al., "FP8 Formats for Deep Learning", 2022; NVIDIA Transformer Engine). The
scale maps the tensor's largest magnitude ``amax`` near the format's maximum,

    s = fp8_max / amax / 2**margin,

so the tensor uses the top of the range and as few values as possible fall into the subnormals.
*Current* scaling computes ``amax`` of the tensor being cast (an extra pass over it); *delayed* scaling
(Transformer Engine's ``DelayedScaling`` recipe) uses the maximum of the ``amax`` values recorded over the last
``history_len`` steps, so the cast needs no extra pass; values that outgrow the history saturate at
``±fp8_max``. The recipe of the paper: E4M3 (more precision) for weights and activations in the forward
pass, E5M2 (more range) for the gradients in the backward pass; matrix products accumulate in FP32.

Rounding is emulated by :func:`lib.precision.rounding.round_to_format` (bit-exact with torch's FP8
casts), so everything here runs on any CPU; the products themselves run in FP32.

Chapter: "Mixed precision training" (``chapters/mixed_precision.ipynb``).

Glossary
--------
amax        max |x| over a tensor
s           per-tensor scale; the stored value is fl8(x * s), the value used is fl8(x * s) / s
margin      extra headroom: s is divided by 2**margin
history     the last ``history_len`` amax values (delayed scaling)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from lib.precision.formats import float_info
from lib.precision.rounding import round_to_format

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def quantize(x: torch.Tensor, fmt: torch.dtype = E4M3, scale: float = 1.0) -> torch.Tensor:
    """``fl8(x * scale) / scale`` in float32 (saturating at ``±max``): the value an FP8 tensor stands for."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point torch.Tensor")
    if not (isinstance(scale, int | float) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    xf = x.float()
    return round_to_format(xf * scale, fmt, saturate=True) / scale


def amax_scale(amax: float, fmt: torch.dtype = E4M3, margin: int = 0) -> float:
    """The per-tensor scale ``fp8_max / amax / 2**margin``, a power of two (``1.0`` when ``amax`` is 0 or not finite).

    Rounding the scale down to a power of two makes ``x * s`` exact, so the only rounding is FP8's.
    """
    if not isinstance(margin, int) or margin < 0:
        raise ValueError(f"margin must be a non-negative int, got {margin!r}")
    if not (amax > 0 and math.isfinite(amax)):
        return 1.0
    return 2.0 ** math.floor(math.log2(float_info(fmt).max / amax) - margin)


@dataclass
class DelayedScaling:
    """Per-tensor scale from the history of amax values (Transformer Engine's delayed scaling).

    :meth:`__call__` quantizes with the *current* scale (computed from earlier tensors), then records this
    tensor's amax and recomputes the scale for the next call from the largest amax of the history
    (Transformer Engine's ``amax_compute_algo="max"``); when that is 0 or not finite the scale is kept, as
    Transformer Engine does. Two deliberate differences from Transformer Engine's ``DelayedScaling``
    (whose defaults are ``amax_history_len=1024``, ``margin=0``): the first call, before any history
    exists, uses the tensor's own amax (current scaling) where Transformer Engine starts from ``s = 1``;
    and the scale is rounded down to a power of two (:func:`amax_scale`), where Transformer Engine uses
    the FP32 quotient ``fp8_max / amax / 2**margin`` as it is.
    """

    fmt: torch.dtype = E4M3
    history_len: int = 16
    """Number of past amax values the scale is computed from."""
    margin: int = 0
    """Extra headroom (powers of two)."""
    history: list[float] = field(default_factory=list)
    scale: float | None = None
    """The scale the next call will use (``None`` before the first call)."""
    saturated: int = 0
    """Number of elements that hit ``±fp8_max`` so far (they outgrew the history)."""

    def __post_init__(self) -> None:
        if self.fmt not in (E4M3, E5M2):
            raise ValueError(f"fmt must be torch.float8_e4m3fn or torch.float8_e5m2, got {self.fmt}")
        if not isinstance(self.history_len, int) or self.history_len < 1:
            raise ValueError(f"history_len must be a positive int, got {self.history_len!r}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        amax = float(x.detach().abs().max()) if x.numel() else 0.0
        if self.scale is None:
            self.scale = amax_scale(amax, self.fmt, self.margin)
        s = self.scale
        self.saturated += int((x.detach().abs() * s > float_info(self.fmt).max).sum())
        q = quantize(x, self.fmt, s)
        self.history = (self.history + [amax])[-self.history_len :]
        top = max(self.history)
        if top > 0 and math.isfinite(top):  # else keep the scale (Transformer Engine's rule)
            self.scale = amax_scale(top, self.fmt, self.margin)
        return q


class _Fp8LinearFn(torch.autograd.Function):
    """``y = q(x) @ q(W)^T + b`` with E4M3 inputs, and E5M2 output gradients in backward (FP32 products)."""

    @staticmethod
    def forward(ctx, x, weight, bias, layer):  # x (B, in), weight (out, in)
        xq, wq = layer.cast("x", x, E4M3), layer.cast("w", weight, E4M3)
        ctx.save_for_backward(xq, wq)
        ctx.layer = layer
        y = xq @ wq.T
        return y if bias is None else y + bias

    @staticmethod
    def backward(ctx, gy):  # gy (B, out)
        xq, wq = ctx.saved_tensors
        gq = ctx.layer.cast("g", gy, E5M2)
        return gq @ wq, gq.T @ xq, gy.sum(0), None


class Fp8Linear(torch.nn.Linear):
    """A ``torch.nn.Linear`` whose matrix product uses FP8-rounded operands (emulated).

    Args:
        in_features, out_features, bias: as for ``torch.nn.Linear``.
        scaling: ``"delayed"`` (history of amax), ``"current"`` (amax of the tensor itself) or ``"none"``
            (``s = 1``: the raw values are cast, the ablation).
        history_len: delayed scaling's history length.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, scaling: str = "delayed", history_len: int = 16
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        if scaling not in ("delayed", "current", "none"):
            raise ValueError(f"scaling must be 'delayed', 'current' or 'none', got {scaling!r}")
        self.scaling = scaling
        self.scalers = {k: DelayedScaling(f, history_len) for k, f in (("x", E4M3), ("w", E4M3), ("g", E5M2))}

    def cast(self, name: str, t: torch.Tensor, fmt: torch.dtype) -> torch.Tensor:
        """Quantize ``t`` (the layer's input ``x``, weight ``w`` or output gradient ``g``) to ``fmt``."""
        if self.scaling == "none":
            return quantize(t, fmt, 1.0)
        if self.scaling == "current":
            return quantize(t, fmt, amax_scale(float(t.detach().abs().max()), fmt))
        return self.scalers[name](t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = _Fp8LinearFn.apply(x.reshape(-1, shape[-1]), self.weight, self.bias, self)
        return y.reshape(*shape[:-1], self.out_features)


def to_fp8(model: torch.nn.Module, scaling: str = "delayed", history_len: int = 16) -> torch.nn.Module:
    """Replace every ``torch.nn.Linear`` of ``model`` (in place) by an :class:`Fp8Linear` with the same weights."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, child in model.named_children():
        if isinstance(child, torch.nn.Linear) and not isinstance(child, Fp8Linear):
            new = Fp8Linear(child.in_features, child.out_features, child.bias is not None, scaling, history_len)
            new.load_state_dict(child.state_dict())
            setattr(model, name, new)
        else:
            to_fp8(child, scaling, history_len)
    return model
