"""The selective scan as a Triton kernel: the state lives in registers, time is scanned in blocks.

Gu & Dao (2023), "Mamba", section 3.3.2 (hardware-aware algorithm): read ``delta, A, B, C, u`` from slow memory
once, discretise and scan in fast memory, write only ``y``. One Triton *program* owns one (batch, channel) pair
and keeps its state ``h`` (``n`` floats) on chip; it walks the sequence in blocks of ``BLOCK_L`` steps and, inside
a block, runs the associative scan of :func:`lib.ssm.scan.combine` in parallel (``tl.associative_scan``), then
carries the block's last state into the next block. The ``(L, n)`` states never reach global memory.

The backward recomputes the states with the PyTorch loop (:func:`lib.ssm.scan.scan_states`) and runs the
hand-written adjoint (:func:`lib.ssm.scan.scan_backward`): recomputation instead of storing ``h``, as in Mamba.

Without CUDA this module sets ``TRITON_INTERPRET=1`` before defining the kernel, so it runs on CPU tensors through
Triton's interpreter (slowly: for tests). Chapter: "State space models" (``chapters/ssm.ipynb``).

Glossary
--------
BLOCK_L    time steps per block (scanned in parallel inside the program)
BLOCK_N    state size ``n`` rounded up to a power of two (extra entries masked: ``A_bar = 1``, input 0)
G_SIZE     channels per group of B and C (``d / groups``)
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # CPU only: run the kernel through the interpreter (must precede @triton.jit)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from lib.ssm.scan import _finish, _grouped, _prepare_delta, check_scan_inputs, scan_backward, scan_states  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
"""True when the kernel was defined in interpreter mode (it then runs on CPU tensors)."""

# tl.sum is itself a @triton.jit function defined when triton is first imported; if that happened before
# TRITON_INTERPRET was set, an interpreted kernel cannot call it and we use the builtin tl.reduce instead.
_STD_OK = not INTERPRET or type(tl.sum).__name__ == "InterpretedFunction"

if _STD_OK:

    @triton.jit
    def _sum(x, axis: tl.constexpr):
        return tl.sum(x, axis)

else:
    _sum_combine = tl.standard._sum_combine

    @triton.jit
    def _sum(x, axis: tl.constexpr):
        return tl.reduce(x, axis, _sum_combine)


@triton.jit
def _combine(a1, b1, a2, b2):
    """``(a1, b1) then (a2, b2)`` = ``(a2 a1, a2 b1 + b2)`` (see ``lib.ssm.scan.combine``)."""
    return a2 * a1, a2 * b1 + b2


@triton.jit
def _selective_scan_fwd_kernel(
    U, DELTA, A, B, C, Y, H_LAST,
    L, D_MODEL, N, G_SIZE,
    stride_ub, stride_ud,
    stride_bb, stride_bg, stride_bn,
    BLOCK_L: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_b = tl.program_id(0)  # batch element
    pid_d = tl.program_id(1)  # channel
    g = pid_d // G_SIZE  # its group of B and C
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    a = tl.load(A + pid_d * N + offs_n, mask=mask_n, other=0.0)  # (BLOCK_N,)
    h = tl.full([BLOCK_N], 0.0, tl.float32)  # the state, on chip for the whole sequence (tl.full: see _STD_OK)
    row = pid_b * stride_ub + pid_d * stride_ud
    bc = pid_b * stride_bb + g * stride_bg
    for l0 in range(0, L, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        mask_l = offs_l < L
        mask = mask_l[:, None] & mask_n[None, :]
        dt = tl.load(DELTA + row + offs_l, mask=mask_l, other=0.0)  # (BLOCK_L,)
        u = tl.load(U + row + offs_l, mask=mask_l, other=0.0)
        b = tl.load(B + bc + offs_n[None, :] * stride_bn + offs_l[:, None], mask=mask, other=0.0)  # (BLOCK_L, BLOCK_N)
        c = tl.load(C + bc + offs_n[None, :] * stride_bn + offs_l[:, None], mask=mask, other=0.0)
        a_bar = tl.exp(dt[:, None] * a[None, :])  # masked steps: dt = 0 -> A_bar = 1, input 0 (identity)
        x = (dt * u)[:, None] * b
        a_cum, x_cum = tl.associative_scan((a_bar, x), 0, _combine)  # prefix compositions within the block
        hs = x_cum + a_cum * h[None, :]  # states of this block, (BLOCK_L, BLOCK_N)
        y = _sum(hs * c, 1)
        tl.store(Y + row + offs_l, y, mask=mask_l)
        h = _sum(tl.where((offs_l == l0 + BLOCK_L - 1)[:, None], hs, 0.0), 0)  # carry = last row
    tl.store(H_LAST + (pid_b * D_MODEL + pid_d) * N + offs_n, h, mask=mask_n)


def _forward(delta, A, B, C, u, block_l: int):
    """Run the kernel on float32 contiguous inputs; returns ``y (batch, d, L)``, ``h_last (batch, d, n)``."""
    batch, d, L = u.shape
    G, n = B.shape[1], A.shape[1]
    y = torch.empty_like(u)
    h_last = torch.empty(batch, d, n, device=u.device, dtype=torch.float32)
    grid = (batch, d)
    _selective_scan_fwd_kernel[grid](
        u, delta, A, B, C, y, h_last,
        L, d, n, d // G,
        u.stride(0), u.stride(1),
        B.stride(0), B.stride(1), B.stride(2),
        BLOCK_L=block_l, BLOCK_N=max(2, triton.next_power_of_2(n)),
    )  # fmt: skip
    return y, h_last


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, delta, A, B, C, u, block_l):
        y, h_last = _forward(delta, A, B, C, u, block_l)
        ctx.save_for_backward(delta, A, B, C, u)
        return y, h_last

    @staticmethod
    def backward(ctx, dy, dh_last):
        delta, A, B, C, u = ctx.saved_tensors
        A_bar, h = scan_states(delta, A, B, u)  # recomputation (the forward kept no states)
        return (*scan_backward(delta, A, B, C, u, h, A_bar, dy.contiguous(), dh_last), None)


def selective_scan_triton(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False, block_l=None
):
    """Selective scan with the Triton forward kernel; same arguments and results as
    :func:`lib.ssm.scan.selective_scan_ref`. Computes in float32 (float64 inputs are computed in float32 too).

    Args:
        block_l: time steps per block, a power of two (default 64 on a GPU, 16 in the interpreter).
    """
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    if u.device.type != ("cpu" if INTERPRET else "cuda"):
        raise ValueError(f"u is on {u.device}, but the kernel was defined for {'cpu' if INTERPRET else 'cuda'}")
    block_l = block_l or (16 if INTERPRET else 64)
    if block_l < 1 or block_l & (block_l - 1):
        raise ValueError(f"block_l must be a power of two, got {block_l}")
    dtype_in = u.dtype
    delta = _prepare_delta(delta, delta_bias, delta_softplus).float().contiguous()
    f32 = torch.float32
    y, last = _TritonScan.apply(
        delta, A.to(f32).contiguous(), _grouped(B, f32).contiguous(), _grouped(C, f32).contiguous(),
        u.to(f32).contiguous(), block_l,
    )  # fmt: skip
    out = _finish(y, u, D, z, dtype_in)
    return (out, last) if return_last_state else out
