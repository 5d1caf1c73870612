"""Where the memory of training goes: bytes per parameter, and activation memory measured.

With Adam, every parameter costs its weight, its gradient and two moment estimates ``m, v``; mixed
precision adds an FP32 master copy when the model runs in 16 bits (Micikevicius et al. 2018; the
accounting of Rajbhandari et al., "ZeRO", SC 2020: 2 + 2 + 12 = 16 bytes per parameter):

=================  ======  ====  ======  ======  =====
recipe             weight  grad  master  m, v    total
=================  ======  ====  ======  ======  =====
fp32                  4      4      0       8      16
fp16_master           2      2      4       8      16
bf16_autocast         4      4      0       8      16  (+ 16-bit weight copies made during forward)
bf16_pure             2      2      0       4       8  (no masters: updates are swamped)
=================  ======  ====  ======  ======  =====

So mixed precision does not shrink the per-parameter memory of Adam training; it halves the
*activations* saved for backward, which grow with the batch. :func:`saved_activation_bytes` measures
those with ``torch.autograd.graph.saved_tensors_hooks``: every tensor autograd keeps for the backward
pass, counted once per storage, excluding the parameters themselves.

Chapter: "Mixed precision training" (``chapters/mixed_precision.ipynb``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lib.utils import saved_tensor_bytes


@dataclass(frozen=True)
class BytesPerParameter:
    """Training memory per parameter (bytes) of one recipe, with Adam."""

    recipe: str
    weight: int
    """The weight the model computes with."""
    grad: int
    """Its gradient."""
    master: int
    """The FP32 master copy (0 when the weight itself is FP32, or when there is none)."""
    optimizer: int
    """Adam's ``m`` and ``v``."""

    @property
    def total(self) -> int:
        return self.weight + self.grad + self.master + self.optimizer


RECIPES = ("fp32", "fp16_master", "bf16_autocast", "bf16_pure")


def bytes_per_parameter(recipe: str) -> BytesPerParameter:
    """Bytes per parameter of Adam training in ``recipe`` (one of :data:`RECIPES`; see the module table)."""
    table = {
        "fp32": (4, 4, 0, 8),
        "fp16_master": (2, 2, 4, 8),
        "bf16_autocast": (4, 4, 0, 8),
        "bf16_pure": (2, 2, 0, 4),
    }
    if recipe not in table:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    return BytesPerParameter(recipe, *table[recipe])


def saved_activation_bytes(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    batch: Any,
    autocast_dtype: torch.dtype | None = None,
) -> int:
    """Bytes of the tensors autograd saves for backward during ``loss_fn(model, batch)``, parameters excluded.

    Each saved tensor is counted once per underlying storage (a tensor saved by two ops, or a view of
    one, counts once). Under ``autocast_dtype`` the 16-bit copies of the weights that autocast makes are
    counted too: they live as long as the activations.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if autocast_dtype not in (None, torch.float16, torch.bfloat16):
        raise ValueError(f"autocast_dtype must be None, torch.float16 or torch.bfloat16, got {autocast_dtype}")
    device_type = next(model.parameters()).device.type

    def run() -> torch.Tensor:
        if autocast_dtype is None:
            return loss_fn(model, batch)
        with torch.autocast(device_type, dtype=autocast_dtype):
            return loss_fn(model, batch)

    return saved_tensor_bytes(run, exclude=list(model.parameters()))[1]
