"""Positional encodings: 1D sinusoidal (Vaswani et al., 2017), 2D sin-cos and rotary (RoPE).

Self-attention is permutation-equivariant, so position must be injected. The sinusoidal code of
Vaswani et al. (2017, section 3.5) is

    PE(pos, 2i) = sin(pos * omega_i),  PE(pos, 2i+1) = cos(pos * omega_i),  omega_i = base^(-2i / d),

and each pair ``(sin, cos)`` at frequency ``omega_i`` turns by the angle ``k * omega_i`` when ``pos``
moves to ``pos + k``: ``PE(pos + k) = R(k) PE(pos)`` with ``R(k)`` block-diagonal of 2x2 rotations
(:func:`shift_matrix`). Later chapters reuse the same frequencies: :func:`sincos_2d` encodes a grid
of image patches (half the channels for rows, half for columns, as in ViT/MAE and Stable Diffusion 3),
and :func:`apply_rotary` (Su et al., 2021) rotates queries and keys so that ``q_m . k_n`` depends on
``m - n`` only. Chapter: "From RNNs to the Transformer" (``chapters/transformer.ipynb``).

Glossary
--------
pos      integer position ``0 .. n-1``
d        model width (even)
omega_i  frequency of pair ``i``, ``base^(-2i/d)``; wavelengths from ``2 pi`` to ``2 pi * base``
R(k)     ``(d, d)`` rotation with ``PE(pos + k) = R(k) @ PE(pos)``
"""

from __future__ import annotations

import torch
from torch import nn


def _check_even(d: int, name: str = "d_model") -> None:
    if not isinstance(d, int) or d < 2 or d % 2:
        raise ValueError(f"{name} must be an even int >= 2, got {d!r}")


def frequencies(d_model: int, base: float = 10000.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``omega_i = base^(-2i/d)`` for ``i = 0 .. d/2 - 1``, shape ``(d/2,)``."""
    _check_even(d_model)
    if not base > 1:
        raise ValueError(f"base must be > 1, got {base!r}")
    return base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model).to(dtype)


def sinusoidal_encoding(
    positions: int | torch.Tensor, d_model: int, base: float = 10000.0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The sinusoidal code ``PE``, shape ``(n, d_model)`` (sin in even columns, cos in odd ones).

    Args:
        positions: ``n`` (positions ``0 .. n-1``) or a 1D tensor of (possibly fractional) positions.
        d_model: even width.
        base: the wavelength base (10000 in the paper).
    """
    if isinstance(positions, int):
        if positions < 1:
            raise ValueError(f"positions must be >= 1, got {positions}")
        positions = torch.arange(positions, dtype=torch.float64)
    elif not torch.is_tensor(positions) or positions.dim() != 1:
        raise ValueError(f"positions must be an int or a 1D tensor, got {getattr(positions, 'shape', positions)}")
    angles = positions.double()[:, None] * frequencies(d_model, base, torch.float64)  # (n, d/2)
    pe = torch.stack([angles.sin(), angles.cos()], dim=-1)  # (n, d/2, 2): pair (sin, cos)
    return pe.flatten(1).to(dtype)  # (n, d)


def shift_matrix(k: float, d_model: int, base: float = 10000.0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``R(k)``, ``(d, d)``, with ``PE(pos + k) = R(k) @ PE(pos)`` for every ``pos``.

    Pair ``i`` is ``(sin a, cos a)`` with ``a = pos * omega_i``; adding ``b = k * omega_i`` gives
    ``sin(a+b) = cos b sin a + sin b cos a`` and ``cos(a+b) = -sin b sin a + cos b cos a``.
    ``R(k)`` depends on ``k`` only, is orthogonal, and ``R(k)^T = R(-k)``.
    """
    b = k * frequencies(d_model, base, torch.float64)  # (d/2,)
    c, s = b.cos(), b.sin()
    R = torch.zeros(d_model, d_model, dtype=torch.float64)
    idx = torch.arange(0, d_model, 2)
    R[idx, idx], R[idx, idx + 1] = c, s
    R[idx + 1, idx], R[idx + 1, idx + 1] = -s, c
    return R.to(dtype)


class SinusoidalPositionalEncoding(nn.Module):
    """Add ``PE[:T]`` to ``x (batch, T, d_model)``; the table is a buffer of ``max_len`` rows."""

    def __init__(self, d_model: int, max_len: int = 512, base: float = 10000.0) -> None:
        super().__init__()
        self.register_buffer("pe", sinusoidal_encoding(max_len, d_model, base), persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """``x + PE[offset : offset + T]``; ``offset`` is the position of ``x``'s first row (cached decoding)."""
        if not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be a non-negative int, got {offset!r}")
        if x.dim() != 3 or x.shape[-1] != self.pe.shape[1] or offset + x.shape[1] > self.pe.shape[0]:
            raise ValueError(
                f"x must be (batch, T, {self.pe.shape[1]}) with offset + T <= {self.pe.shape[0]}, "
                f"got {tuple(x.shape)} at offset {offset}"
            )
        return x + self.pe[offset : offset + x.shape[1]].to(x.dtype)


def sincos_2d(height: int, width: int, d_model: int, base: float = 10000.0) -> torch.Tensor:
    """2D sin-cos code of a ``height x width`` grid, ``(height * width, d_model)``, row-major.

    The first ``d/2`` channels are the 1D code of the row index, the last ``d/2`` that of the column
    index (``d_model`` must be divisible by 4).
    """
    if not isinstance(d_model, int) or d_model % 4:
        raise ValueError(f"d_model must be divisible by 4, got {d_model!r}")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height}, {width}")
    rows = sinusoidal_encoding(height, d_model // 2, base)  # (H, d/2)
    cols = sinusoidal_encoding(width, d_model // 2, base)  # (W, d/2)
    grid = torch.cat([rows[:, None].expand(-1, width, -1), cols[None].expand(height, -1, -1)], dim=-1)
    return grid.reshape(height * width, d_model)


def apply_rotary(x: torch.Tensor, positions: torch.Tensor | None = None, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding: rotate pair ``(x_{2i}, x_{2i+1})`` of token ``m`` by ``m * omega_i``.

    Args:
        x: ``(..., T, d)`` queries or keys (``d`` even).
        positions: ``(T,)`` positions; default ``0 .. T-1``.

    Returns:
        Same shape; ``apply_rotary(q)[m] . apply_rotary(k)[n]`` depends on ``m - n`` only.
    """
    if not torch.is_tensor(x) or x.dim() < 2:
        raise ValueError(f"x must be a tensor (..., T, d), got {getattr(x, 'shape', x)}")
    T, d = x.shape[-2], x.shape[-1]
    _check_even(d, "x.shape[-1]")
    positions = torch.arange(T, device=x.device) if positions is None else positions
    if positions.shape != (T,):
        raise ValueError(f"positions must have shape ({T},), got {tuple(positions.shape)}")
    angles = positions.double()[:, None] * frequencies(d, base, torch.float64).to(x.device)  # (T, d/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (..., T, d/2)
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.flatten(-2)
