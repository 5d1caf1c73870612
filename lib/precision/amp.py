"""What ``torch.autocast`` does to each op: run it in low precision, keep it in FP32, or leave it.

Autocast keeps three lists per device type: ops that gain from low precision (matrix products,
convolutions) are cast to the autocast dtype; numerically sensitive ops (losses, norms, ``exp``/``log``
families, large reductions on CUDA) are run in FP32; everything else runs in the dtype of its inputs.
:func:`autocast_table` observes the output dtype of a few ops, given FP32 inputs, on this machine's
torch (the lists differ between CPU and CUDA and between torch versions).

Chapter: "Mixed precision training" (``chapters/mixed_precision.ipynb``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "matmul": lambda a, w: a @ w,
    "linear": lambda a, w: F.linear(a, w),
    "conv2d": lambda a, w: F.conv2d(a[None, None], w[None, None]),
    "bmm": lambda a, w: torch.bmm(a[None], w[None]),
    "add": lambda a, w: a + w,
    "relu": lambda a, w: F.relu(a),
    "exp": lambda a, w: torch.exp(a),
    "sum": lambda a, w: a.sum(),
    "softmax": lambda a, w: torch.softmax(a, -1),
    "log_softmax": lambda a, w: torch.log_softmax(a, -1),
    "layer_norm": lambda a, w: F.layer_norm(a, a.shape[-1:]),
    "cross_entropy": lambda a, w: F.cross_entropy(a, torch.zeros(a.shape[0], dtype=torch.long)),
    "mse_loss": lambda a, w: F.mse_loss(a, w),
}
"""The ops of the table: ``op(a, w)`` with ``a, w`` square FP32 matrices."""


def autocast_table(dtype: torch.dtype = torch.bfloat16, device_type: str = "cpu") -> dict[str, str]:
    """How ``torch.autocast(device_type, dtype)`` treats each op of :data:`OPS`, observed.

    Each op is run on FP32 inputs and on inputs already in ``dtype``; the verdict is ``"lower"``
    (FP32 in, ``dtype`` out), ``"fp32"`` (``dtype`` in, FP32 out) or ``"as input"`` (dtype follows
    the inputs).
    """
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float16 or torch.bfloat16, got {dtype}")
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"device_type must be 'cpu' or 'cuda', got {device_type!r}")
    a = torch.randn(4, 4, device=device_type)
    w = torch.randn(4, 4, device=device_type)
    table = {}
    with torch.autocast(device_type, dtype=dtype):
        for name, op in OPS.items():
            from_fp32, from_low = op(a, w).dtype, op(a.to(dtype), w.to(dtype)).dtype
            table[name] = "lower" if from_fp32 == dtype else "fp32" if from_low == torch.float32 else "as input"
    return table
