"""Binary floating-point formats computed from their bit layout (IEEE 754 and its ML cousins).

A format with ``E`` exponent bits and ``M`` mantissa (fraction) bits stores a sign ``s``, a biased
exponent field ``e`` and a fraction field ``f``; with bias ``b = 2**(E-1) - 1`` a *normal* number is
``(-1)**s * (1 + f / 2**M) * 2**(e - b)`` for ``1 <= e <= e_max`` and a *subnormal* one is
``(-1)**s * (f / 2**M) * 2**(1 - b)`` for ``e = 0``. IEEE formats reserve the all-ones exponent for
infinities and NaN; the OCP FP8 ``E4M3FN`` format keeps it for numbers and uses only the all-ones
pattern ``S.1111.111`` as NaN (no infinities).

References: IEEE 754-2019; Micikevicius et al., "FP8 Formats for Deep Learning" (2022); NVIDIA's
TF32 (A100 whitepaper, 2020); Kalamkar et al., "A Study of BFLOAT16 for Deep Learning Training" (2019).

Glossary
--------
E, M            exponent bits, mantissa (stored fraction) bits; total bits = 1 + E + M
bias            b = 2**(E-1) - 1
eps             machine epsilon 2**-M: the gap between 1 and the next representable number
min_normal      2**(1 - b), smallest positive normal number (torch.finfo(...).tiny)
min_subnormal   2**(1 - b - M), smallest positive number; below half of it everything rounds to 0
max             largest finite number

Chapter: "Mixed precision training" (``chapters/mixed_precision.ipynb``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point layout (the input of :func:`float_info`)."""

    name: str
    """Short name, e.g. ``"float16"``."""
    exponent_bits: int
    """E, number of exponent bits."""
    mantissa_bits: int
    """M, number of stored fraction bits (the leading 1 of normals is implicit)."""
    has_inf: bool = True
    """IEEE-style: the all-ones exponent encodes inf/NaN. ``False`` for E4M3FN (only S.1111.111 is NaN)."""

    def __post_init__(self) -> None:
        if not (isinstance(self.exponent_bits, int) and 2 <= self.exponent_bits <= 11):
            raise ValueError(f"exponent_bits must be an int in [2, 11], got {self.exponent_bits!r}")
        if not (isinstance(self.mantissa_bits, int) and 1 <= self.mantissa_bits <= 52):
            raise ValueError(f"mantissa_bits must be an int in [1, 52], got {self.mantissa_bits!r}")


FORMATS: dict[str, FloatFormat] = {
    "float64": FloatFormat("float64", 11, 52),
    "float32": FloatFormat("float32", 8, 23),
    "tfloat32": FloatFormat("tfloat32", 8, 10),
    "float16": FloatFormat("float16", 5, 10),
    "bfloat16": FloatFormat("bfloat16", 8, 7),
    "float8_e4m3fn": FloatFormat("float8_e4m3fn", 4, 3, has_inf=False),
    "float8_e5m2": FloatFormat("float8_e5m2", 5, 2),
}
"""The formats of the chapter, by name (``"tf32"`` is accepted as an alias of ``"tfloat32"``)."""

_DTYPES = {
    torch.float64: "float64",
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float8_e4m3fn: "float8_e4m3fn",
    torch.float8_e5m2: "float8_e5m2",
}


@dataclass(frozen=True)
class FloatInfo:
    """Properties of a format, all derived from ``(E, M, has_inf)`` by :func:`float_info`."""

    name: str
    bits: int
    """Total bits 1 + E + M (TF32 has 19 significant bits, stored in a 32-bit register)."""
    exponent_bits: int
    mantissa_bits: int
    bias: int
    """Exponent bias 2**(E-1) - 1."""
    max: float
    """Largest finite value."""
    min_normal: float
    """Smallest positive normal value 2**(1 - bias)."""
    min_subnormal: float
    """Smallest positive subnormal value 2**(1 - bias - M)."""
    eps: float
    """Machine epsilon 2**-M (distance from 1 to the next number)."""
    decimal_digits: float
    """Significant decimal digits (M + 1) * log10(2)."""
    resolution: float
    """10**-floor(-log10(eps)), numpy's/torch.finfo's ``resolution``."""
    has_inf: bool

    @property
    def unit_roundoff(self) -> float:
        """u = eps / 2, the largest relative error of round-to-nearest on normal numbers."""
        return self.eps / 2


def _format(dtype: torch.dtype | str | FloatFormat) -> FloatFormat:
    if isinstance(dtype, FloatFormat):
        return dtype
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be a floating dtype among {sorted(_DTYPES.values())}, got {dtype}")
        return FORMATS[_DTYPES[dtype]]
    if isinstance(dtype, str):
        name = {"tf32": "tfloat32", "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}.get(dtype, dtype)
        if name not in FORMATS:
            raise ValueError(f"dtype must be one of {sorted(FORMATS)} or 'tf32', got {dtype!r}")
        return FORMATS[name]
    raise TypeError(f"dtype must be a torch.dtype, a format name or a FloatFormat, got {type(dtype).__name__}")


def float_info(dtype: torch.dtype | str | FloatFormat) -> FloatInfo:
    """Range and precision of a floating-point format, computed from its bit layout.

    Args:
        dtype: a torch floating dtype (``torch.float16``, ``torch.float8_e4m3fn``, ...), a name from
            :data:`FORMATS` (``"tfloat32"`` or ``"tf32"``: torch has no TF32 dtype) or a :class:`FloatFormat`.
    """
    fmt = _format(dtype)
    E, M = fmt.exponent_bits, fmt.mantissa_bits
    bias = 2 ** (E - 1) - 1
    if fmt.has_inf:  # top exponent field 2**E - 1 is inf/NaN: largest normal has field 2**E - 2
        max_ = (2 - 2.0**-M) * 2.0 ** (2**E - 2 - bias)
    else:  # E4M3FN: top field is a normal binade, but fraction all-ones there is NaN
        max_ = (2 - 2.0 ** (1 - M)) * 2.0 ** (2**E - 1 - bias)
    eps = 2.0**-M
    return FloatInfo(
        name=fmt.name,
        bits=1 + E + M,
        exponent_bits=E,
        mantissa_bits=M,
        bias=bias,
        max=max_,
        min_normal=2.0 ** (1 - bias),
        min_subnormal=2.0 ** (1 - bias - M),
        eps=eps,
        decimal_digits=(M + 1) * math.log10(2),
        resolution=10.0 ** -math.floor(-math.log10(eps)),
        has_inf=fmt.has_inf,
    )


def representable(dtype: torch.dtype | str | FloatFormat) -> torch.Tensor:
    """All positive finite values of a format of at most 16 bits, sorted, float64 ``(n,)``.

    Enumerates every ``(e, f)`` field pair of the layout; used for the number-line figure.
    """
    info = float_info(dtype)
    if info.bits > 16:
        raise ValueError(f"dtype must have at most 16 bits to enumerate, {info.name} has {info.bits}")
    E, M, b = info.exponent_bits, info.mantissa_bits, info.bias
    f = torch.arange(2**M, dtype=torch.float64)
    vals = [f[1:] / 2**M * 2.0 ** (1 - b)]  # subnormals
    top = 2**E - 1 if not info.has_inf else 2**E - 2
    for e in range(1, top + 1):
        vals.append((1 + f / 2**M) * 2.0 ** (e - b))
    out = torch.cat(vals)
    return out[out <= info.max]
