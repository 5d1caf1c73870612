"""Round-to-nearest-even from FP32 to BF16 and FP16 with integer bit operations.

The float32 input is reinterpreted as its 32 bits ``u = s | e (8 bits) | f (23 bits)``. Rounding a
significand to fewer bits keeps the high bits ``q`` and looks at the dropped remainder ``r`` against
half a unit in the last kept place ``h``: round up when ``r > h``, or when ``r == h`` and ``q`` is odd
(ties to even). A carry out of the significand bumps the exponent, and a carry out of the largest
finite number gives infinity; both fall out of plain integer addition on the packed bits.

* BF16 keeps FP32's 8 exponent bits, so rounding is one integer add on the top 16 bits:
  ``(u + 0x7FFF + ((u >> 16) & 1)) >> 16``.
* FP16 has 5 exponent bits (bias 15): values below 2**-14 become subnormal (the significand is shifted
  further right before rounding), values from 65520 up overflow to infinity.

NaN inputs give a quiet NaN (torch's own NaN payload depends on the code path it takes: scalar and
vectorised casts differ, so tests compare NaN with NaN, not bit patterns).

Chapter: "Mixed precision training" (``chapters/mixed_precision.ipynb``).

Glossary
--------
u        the 32 input bits as a non-negative int64
s, e, f  sign bit, biased exponent field (bias 127), fraction field of the FP32 input
m        24-bit significand with its implicit leading one (normals)
q, r, h  kept bits, dropped remainder, half of the last kept place
"""

from __future__ import annotations

import torch

_QNAN32 = 0x7FC00000


def _check(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"x must be a float32 tensor, got {x.dtype}")
    return x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF  # u, (...) int64


def _to_float32(u: torch.Tensor) -> torch.Tensor:
    """Inverse of ``_check``: int64 bit patterns in [0, 2**32) -> float32 tensor."""
    return torch.where(u >= 2**31, u - 2**32, u).to(torch.int32).view(torch.float32)


def _round_shift(m: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``m / 2**shift`` rounded to nearest, ties to even; int64 tensors, ``shift >= 1``."""
    q = m >> shift
    r = m & ((1 << shift) - 1)
    h = 1 << (shift - 1)
    up = (r > h) | ((r == h) & ((q & 1) == 1))
    return q + up.to(torch.int64)


def round_to_bf16(x: torch.Tensor) -> torch.Tensor:
    """Round a float32 tensor to the nearest bfloat16 value (ties to even); returns float32.

    Bit-exact with ``x.to(torch.bfloat16).float()`` for every non-NaN input (NaN stays NaN).
    """
    u = _check(x)
    is_nan = (u & 0x7FFFFFFF) > 0x7F800000
    bias = 0x7FFF + ((u >> 16) & 1)  # h - 1, plus 1 when q is odd: ties go to even
    out = ((u + bias) >> 16) << 16  # carries into the exponent (and up to inf) for free
    out = torch.where(is_nan, torch.full_like(u, _QNAN32), out)
    return _to_float32(out).reshape(x.shape)


def round_to_fp16(x: torch.Tensor) -> torch.Tensor:
    """Round a float32 tensor to the nearest float16 value (ties to even); returns float32.

    Handles FP16 subnormals (below 2**-14), underflow to ±0 (at or below 2**-25), overflow to ±inf
    (from 65520 up) and signed zeros. Bit-exact with ``x.to(torch.float16).float()`` for every non-NaN
    input (NaN stays NaN).
    """
    u = _check(x)
    s = u >> 31
    e = (u >> 23) & 0xFF
    f = u & 0x7FFFFF
    is_nan = (e == 0xFF) & (f != 0)
    m = torch.where(e > 0, f | 0x800000, f)  # 24-bit significand (FP32 subnormals are far below FP16's range)
    exp = torch.where(e > 0, e - 127, torch.full_like(e, -126))  # unbiased exponent: |x| = m * 2**(exp - 23)
    # FP16 exponent field of the result (>= 1; the subnormal range shares field 1's scale 2**-14)
    e16 = torch.clamp(exp + 15, min=1)
    shift = torch.clamp(13 + (e16 - (exp + 15)), max=40)  # keep 11 bits for normals, fewer for subnormals
    q = _round_shift(m, shift)  # in [0, 2048]
    h16 = ((e16 - 1) << 10) + q  # packed |x| in FP16 bits; a carry of q bumps the exponent field
    h16 = torch.clamp(h16, max=0x7C00)  # overflow (and FP32 inf) -> FP16 inf
    # back to FP32 bits: normals by moving fields, subnormals (field 0) via their exact value
    e_h, f_h = h16 >> 10, h16 & 0x3FF
    normal = (s << 31) | ((e_h - 15 + 127) << 23) | (f_h << 13)
    inf = (s << 31) | 0x7F800000
    out = torch.where(e_h == 0x1F, inf, normal)
    out = torch.where(is_nan, torch.full_like(u, _QNAN32), out)
    result = _to_float32(out)
    sub = (f_h.to(torch.float32) * 2.0**-24) * torch.where(s == 1, -1.0, 1.0)  # exact: f_h < 2**10
    result = torch.where(e_h == 0, sub, result)
    return result.reshape(x.shape)


def round_to_format(x: torch.Tensor, fmt, saturate: bool | None = None) -> torch.Tensor:
    """Round a float32 tensor to the nearest value of any binary format (ties to even); returns float32.

    An emulation by exact arithmetic, for formats torch may not store (FP8, or any ``FloatFormat``):
    with ``e = max(floor(log2 |x|), 1 - b)`` the values of the format near ``x`` are the multiples of the
    quantum ``2**(e - M)``, so ``x`` rounds to ``round_half_even(x / quantum) * quantum``. In float64,
    ``x / quantum`` is exact (a power-of-two division of a 24-bit significand), and a carry into the next
    binade lands on ``2**(e+1)``, which is representable. Subnormals share the quantum of the lowest binade.

    Args:
        x: float32 tensor.
        fmt: a ``torch.dtype``, a format name or a :class:`~lib.precision.formats.FloatFormat`.
        saturate: overflow (``|x|`` past the largest finite value after rounding) goes to ``±max``
            when ``True`` and to ``±inf`` when ``False``. Default: what torch's cast does, ``±inf`` for
            formats with infinities and ``±max`` for ``float8_e4m3fn`` (which has none; torch's cast
            saturates, infinite inputs included).

    Bit-exact with torch's casts to ``float16``, ``bfloat16``, ``float8_e4m3fn`` and ``float8_e5m2``
    (``x.to(dtype).float()``) for every non-NaN input; NaN stays NaN.
    """
    from lib.precision.formats import float_info

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"x must be a float32 tensor, got {x.dtype}")
    info = float_info(fmt)
    if saturate is None:
        saturate = not info.has_inf
    xd = x.double()
    a = xd.abs()
    finite_nz = torch.isfinite(a) & (a > 0)
    e = torch.floor(torch.log2(torch.where(finite_nz, a, torch.ones_like(a))))
    e = torch.clamp(e, min=1 - info.bias)  # subnormals share the lowest binade's quantum
    quantum = torch.exp2(e - info.mantissa_bits)
    r = torch.round(xd / quantum) * quantum  # torch.round: half to even
    r = torch.where(finite_nz, r, xd)  # zeros (signed), infinities and NaN pass through
    over = r.abs() > info.max
    r = torch.where(over, torch.sign(r) * (info.max if saturate else float("inf")), r)
    return r.float()
