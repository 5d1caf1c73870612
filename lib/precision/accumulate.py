"""Running sums in low precision: stalling (swamping) and Kahan's compensated summation.

Adding ``dx`` to an accumulator ``s`` in a format with machine epsilon ``eps`` changes nothing once
``|dx| <= eps/2 * ulp-scale``, precisely once ``|dx|`` is at most half the gap between ``s`` and its
neighbours. A long FP16 sum of small terms therefore *stalls* at the first power of two ``2**k`` with
``|dx| <= 2**k * eps / 2`` (ties go to the even neighbour, which is ``s`` itself). Kahan summation
carries the rounding error of every addition in a second variable ``c`` and feeds it back.

References: W. Kahan, "Further remarks on reducing truncation errors", CACM 8(1), 1965;
N. Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., 2002, Sec. 4.3.

Chapter: "Mixed precision training" (``chapters/mixed_precision.ipynb``).

Glossary
--------
s    running sum (accumulator)
c    Kahan's compensation: minus the low-order bits lost so far
"""

from __future__ import annotations

import math

import torch

from lib.precision.formats import float_info


def running_sum(x: torch.Tensor, dtype: torch.dtype = torch.float16, kahan: bool = False) -> torch.Tensor:
    """All partial sums ``s_k = x_0 + ... + x_k`` accumulated one by one in ``dtype``.

    Args:
        x: 1-D tensor of terms ``(n,)`` (cast to ``dtype`` first).
        dtype: the accumulator's (and the terms') floating dtype.
        kahan: use Kahan's compensated summation (every operation still in ``dtype``).

    Returns:
        ``(n,)`` float64 tensor of the partial sums.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 1:
        raise ValueError(f"x must be a 1-D tensor, got {type(x).__name__} {getattr(x, 'shape', '')}")
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    xs = x.to(dtype)
    s = torch.zeros((), dtype=dtype)
    c = torch.zeros((), dtype=dtype)
    out = torch.empty(len(xs), dtype=torch.float64)
    for k, xk in enumerate(xs):
        if kahan:
            y = xk - c  # the term, corrected by what was lost before
            t = s + y  # big + small: low-order bits of y are lost ...
            c = (t - s) - y  # ... and recovered here (algebraically zero)
            s = t
        else:
            s = s + xk
        out[k] = float(s)
    return out


def stall_value(dx: float, dtype: torch.dtype = torch.float16) -> float:
    """Where a plain running sum of the constant term ``dx > 0`` stops growing in ``dtype`` (prediction).

    The sum stalls at the first power of two ``2**k`` with ``dx <= 2**k * eps / 2``, i.e. the smallest
    ``2**k >= 2 dx / eps`` (for ``dx`` already rounded to ``dtype``).
    """
    if not dx > 0:
        raise ValueError(f"dx must be > 0, got {dx!r}")
    eps = float_info(dtype).eps
    dx = float(torch.tensor(dx, dtype=dtype))
    return 2.0 ** math.ceil(math.log2(2 * dx / eps))
