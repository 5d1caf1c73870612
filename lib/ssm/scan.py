"""The selective scan of Mamba (S6): a sequential reference, a fused loop with a hand-written backward, and
two parallel scans (log-depth, and chunked in Mamba-2's segment-sum form), all with the signature of
``mamba_ssm``'s ``selective_scan_ref``.

Gu & Dao (2023), "Mamba", algorithm 2 and section 3.3; Dao & Gu (2024), "Transformers are SSMs" (Mamba-2), the
SSD chunked algorithm; Blelloch (1990) for prefix sums. Chapter: "State space
models" (``chapters/ssm.ipynb``).

The recurrence, for every batch element, channel ``d`` and state index ``n`` (ZOH for A, Euler for B, as in Mamba)::

    A_bar[t] = exp(delta[t] * A)                 (batch, d, L, n)
    x[t]     = delta[t] * B[t] * u[t]            (batch, d, L, n)   the "B_bar u" input term
    h[t]     = A_bar[t] * h[t-1] + x[t]          (batch, d, n), h[-1] = 0
    y[t]     = sum_n C[t, n] * h[t, n] + D * u[t]
    out      = y * silu(z)                       (if z is given)

Glossary
--------
u, delta, z          ``(batch, d, L)``: input, step size (before ``delta_bias``/softplus), gate
A                    ``(d, n)`` real (negative for a stable scan)
B, C                 ``(batch, n, L)`` or ``(batch, groups, n, L)``; group ``g`` serves channels ``g*d/groups ...``
D, delta_bias        ``(d,)``
h                    the state, ``(batch, d, n)``; ``return_last_state`` returns ``h[L-1]``
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMPLEMENTATIONS = ("reference", "loop", "logdepth", "chunked", "triton")
"""Names accepted by :func:`selective_scan`'s ``impl`` argument."""


def check_scan_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None) -> int:
    """Validate the arguments of a selective scan (raises ``TypeError``/``ValueError`` naming the argument);
    returns the number of groups of B and C."""
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        if not torch.is_tensor(t):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a real floating-point tensor, got dtype {t.dtype}")
    if u.dim() != 3:
        raise ValueError(f"u must have shape (batch, d, L), got {tuple(u.shape)}")
    batch, d, L = u.shape
    if L < 1:
        raise ValueError(f"u must have a sequence length L >= 1, got shape {tuple(u.shape)}")
    if delta.shape != u.shape:
        raise ValueError(f"delta must have the shape of u {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"A must have shape (d={d}, n), got {tuple(A.shape)}")
    n = A.shape[1]
    groups = None
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 3 and t.shape == (batch, n, L):
            g = 1
        elif t.dim() == 4 and t.shape[0] == batch and t.shape[2:] == (n, L) and t.shape[1] >= 1 and d % t.shape[1] == 0:
            g = t.shape[1]
        else:
            raise ValueError(
                f"{name} must have shape (batch={batch}, n={n}, L={L}) or (batch, groups, n, L) with groups "
                f"dividing d={d}, got {tuple(t.shape)}"
            )
        if groups is not None and g != groups:
            raise ValueError(f"B and C must have the same number of groups, got {groups} and {g}")
        groups = g
    for name, t, shape in (("D", D, (d,)), ("delta_bias", delta_bias, (d,)), ("z", z, tuple(u.shape))):
        if t is None:
            continue
        if not torch.is_tensor(t):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    return groups


def compute_dtype(u: torch.Tensor) -> torch.dtype:
    """float32, or float64 for float64 inputs (the reference computes in float32; float64 serves gradcheck)."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _grouped(X: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """B or C as ``(batch, groups, n, L)`` in ``dtype`` (a 3-d tensor is one group)."""
    return (X.unsqueeze(1) if X.dim() == 3 else X).to(dtype)


def _per_channel(X: torch.Tensor, d: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """B or C repeated over the channels of each group: ``(batch, d, n, L)``."""
    X = _grouped(X, dtype)
    return X.repeat_interleave(d // X.shape[1], dim=1)


def _prepare_delta(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
    dtype = compute_dtype(delta)
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].to(dtype)
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def _finish(y, u, D, z, dtype_in):
    """``(y + D u) * silu(z)``, cast back to the input dtype (as the reference does)."""
    out = y if D is None else y + u.to(y.dtype) * D.to(y.dtype)[:, None]
    if z is not None:
        out = out * F.silu(z.to(y.dtype))
    return out.to(dtype_in)


# ----------------------------------------------------------------------------- the reference (the test oracle)


def selective_scan_ref(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """The sequential definition, step by step in float32 (float64 for float64 inputs): the semantics of ``mamba_ssm``'s
    ``selective_scan_ref`` for real ``A`` and input-dependent ``B``, ``C``. Differentiable by autograd (slowly:
    the graph has one node per step). Returns ``out (batch, d, L)`` or ``(out, last_state (batch, d, n))``."""
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    dt = delta.dtype
    uf, Af = u.to(dt), A.to(dt)
    batch, d, L = u.shape
    Bd, Cd = _per_channel(B, d, dt), _per_channel(C, d, dt)  # (batch, d, n, L)
    h = u.new_zeros(batch, d, A.shape[1], dtype=dt)
    ys = []
    for t in range(L):
        A_bar = torch.exp(delta[:, :, t, None] * Af)  # (batch, d, n)
        h = A_bar * h + delta[:, :, t, None] * Bd[..., t] * uf[:, :, t, None]
        ys.append((h * Cd[..., t]).sum(-1))  # (batch, d)
    y = torch.stack(ys, dim=2)
    out = _finish(y, u, D, z, dtype_in)
    return (out, h) if return_last_state else out


# ----------------------------------------------------------------------------- the fused loop and its backward


def _linear_scan(a: torch.Tensor, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """``h[t] = a[t] * h[t-1] + x[t]`` along dim 0 (``h[-1] = 0``), one fused multiply-add per step into a
    preallocated output. ``reverse`` runs the adjoint recurrence from the end: ``h[t] = a[t+1] * h[t+1] + x[t]``."""
    h = torch.empty_like(x)
    L = x.shape[0]
    if reverse:
        h[L - 1].copy_(x[L - 1])
        for t in range(L - 2, -1, -1):
            torch.addcmul(x[t], a[t + 1], h[t + 1], out=h[t])
    else:
        h[0].copy_(x[0])
        for t in range(1, L):
            torch.addcmul(x[t], a[t], h[t - 1], out=h[t])
    return h


def _time_major(delta, B, u):
    """``delta, u -> (L, batch, d)`` and grouped ``B (batch, G, n, L) -> (L, batch, G, 1, n)``, contiguous."""
    return (
        delta.permute(2, 0, 1).contiguous(),
        B.permute(3, 0, 1, 2).unsqueeze(3).contiguous(),
        u.permute(2, 0, 1).contiguous(),
    )


def _per_group(t: torch.Tensor, G: int) -> torch.Tensor:
    """``(L, batch, d, ...) -> (L, batch, G, d/G, ...)`` (a view)."""
    return t.view(t.shape[0], t.shape[1], G, t.shape[2] // G, *t.shape[3:])


class _LoopScan(torch.autograd.Function):
    """Core of the scan, ``(delta, A, B, C, u) -> (y, h_last)``, computed time-major ``(L, batch, d, n)``.

    Forward keeps the states ``h`` (one float per (t, batch, d, n)); backward is the adjoint recurrence run in
    reverse, ``g[t] = C[t] dy[t] + A_bar[t+1] g[t+1]``, followed by closed-form gradients of every input.
    """

    @staticmethod
    def forward(ctx, delta, A, B, C, u):
        # delta, u: (batch, d, L); A: (d, n); B, C: (batch, groups, n, L)
        A_bar, h = scan_states(delta, A, B, u)  # (L, batch, d, n) each
        y = scan_output(h, C)
        ctx.save_for_backward(delta, A, B, C, u, h, A_bar)
        return y, h[-1].clone()

    @staticmethod
    def backward(ctx, dy, dh_last):
        return scan_backward(*ctx.saved_tensors, dy, dh_last)


def scan_states(delta, A, B, u):
    """``A_bar = exp(delta A)`` and all states ``h``, both ``(L, batch, d, n)`` contiguous (time-major, so each
    step of the loop reads and writes one contiguous slab), by the fused loop (``B``: ``(batch, G, n, L)``)."""
    G = B.shape[1]
    delta_t, B_t, u_t = _time_major(delta, B, u)
    A_bar = torch.exp(delta_t[..., None] * A)  # (L, batch, d, n)
    x = (_per_group(delta_t * u_t, G)[..., None] * B_t).flatten(2, 3)  # delta B u, (L, batch, d, n)
    return A_bar, _linear_scan(A_bar, x)


def scan_output(h, C):
    """``y[b, d, t] = sum_n C[b, g(d), n, t] h[t, b, d, n]``, ``(batch, d, L)``."""
    C_t = C.permute(3, 0, 1, 2).unsqueeze(3)  # (L, batch, G, 1, n)
    return (_per_group(h, C.shape[1]) * C_t).sum(-1).flatten(2, 3).permute(1, 2, 0)


def scan_backward(delta, A, B, C, u, h, A_bar, dy, dh_last=None):
    """Gradients ``(ddelta, dA, dB, dC, du)`` of the scan core from the states ``h`` and ``A_bar``
    (:func:`scan_states`), the output gradient ``dy (batch, d, L)`` and that of the last state."""
    G = B.shape[1]
    delta_t, B_t, u_t = _time_major(delta, B, u)
    dy_t = dy.permute(2, 0, 1).contiguous()  # (L, batch, d)
    C_t = C.permute(3, 0, 1, 2).unsqueeze(3)  # (L, batch, G, 1, n)
    # adjoint of h: g[t] = dLoss/dh[t] (total), g[t] = C[t] dy[t] + A_bar[t+1] g[t+1]
    src = (_per_group(dy_t, G)[..., None] * C_t).flatten(2, 3)
    if dh_last is not None:
        src[-1] += dh_last
    g = _linear_scan(A_bar, src, reverse=True)  # (L, batch, d, n)
    # dLoss/dA_bar[t] = g[t] * h[t-1] (zero at t = 0); dA_bar/d(delta A) = A_bar
    s = torch.zeros_like(g)
    torch.mul(g[1:], h[:-1], out=s[1:])
    s.mul_(A_bar)  # dLoss/d(delta[t] A), (L, batch, d, n)
    dA = (s * delta_t[..., None]).sum((0, 1))
    du_delta = (_per_group(g, G) * B_t).sum(-1).flatten(2, 3)  # dLoss/d(delta u), (L, batch, d)
    ddelta = (s * A).sum(-1) + du_delta * u_t
    du = du_delta * delta_t
    dB = (_per_group(g * (delta_t * u_t)[..., None], G)).sum(3)  # (L, batch, G, n)
    dC = (_per_group(h * dy_t[..., None], G)).sum(3)
    return (
        ddelta.permute(1, 2, 0), dA, dB.permute(1, 2, 3, 0), dC.permute(1, 2, 3, 0), du.permute(1, 2, 0),
    )  # fmt: skip


def selective_scan_loop(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """The CPU default: one fused multiply-add per step over a preallocated state tensor, and a hand-written
    reverse-scan backward (:class:`_LoopScan`), so the backward is one more loop of length L instead of
    autograd's graph of L nodes. Same arguments and results as :func:`selective_scan_ref`."""
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    dt = delta.dtype
    y, last = _LoopScan.apply(delta, A.to(dt), _grouped(B, dt), _grouped(C, dt), u.to(dt))
    out = _finish(y, u, D, z, dtype_in)
    return (out, last) if return_last_state else out


# ----------------------------------------------------------------------------- parallel scans


def combine(left: tuple[torch.Tensor, torch.Tensor], right: tuple[torch.Tensor, torch.Tensor]):
    """The associative operator of the linear recurrence: composing ``h -> a1 h + b1`` then ``h -> a2 h + b2``
    gives ``h -> (a2 a1) h + (a2 b1 + b2)``."""
    (a1, b1), (a2, b2) = left, right
    return a2 * a1, a2 * b1 + b2


def logdepth_scan(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Inclusive scan of ``h[t] = a[t] h[t-1] + x[t]`` along dim 0 in ``ceil(log2 L)`` rounds (Hillis-Steele):
    round ``k = 1, 2, ...`` combines every element with the one ``2^(k-1)`` before it. Work ``O(L log L)``,
    depth ``O(log L)``."""
    L = x.shape[0]
    shift = 1
    while shift < L:
        a_new, x_new = combine((a[:-shift], x[:-shift]), (a[shift:], x[shift:]))
        a = torch.cat([a[:shift], a_new])
        x = torch.cat([x[:shift], x_new])
        shift *= 2
    return x


def selective_scan_logdepth(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """Selective scan through :func:`logdepth_scan` (autograd differentiates the ``log2 L`` rounds)."""
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    d, dt = u.shape[1], delta.dtype
    Bd, Cd = _per_channel(B, d, dt), _per_channel(C, d, dt)
    A_bar = torch.exp(torch.einsum("bdl,dn->lbdn", delta, A.to(dt)))
    x = torch.einsum("bdl,bdnl->lbdn", delta * u.to(dt), Bd)
    h = logdepth_scan(A_bar, x)
    y = torch.einsum("lbdn,bdnl->bdl", h, Cd)
    out = _finish(y, u, D, z, dtype_in)
    return (out, h[-1]) if return_last_state else out


def chunked_scan(log_a: torch.Tensor, x: torch.Tensor, chunk: int = 64, factored: bool = False) -> torch.Tensor:
    """Scan ``h[t] = exp(log_a[t]) h[t-1] + x[t]`` along dim 0 (``h[-1] = 0``), in chunks of ``chunk`` steps.

    Inside a chunk that starts from the carried state ``h0``, with ``P[t] = sum_{r<=t} log_a[r]`` (a cumulative
    sum over the chunk, parallel)::

        h[t] = exp(P[t]) h0 + sum_{s<=t} exp(P[t] - P[s]) x[s]

    The default (``factored=False``) is the segment-sum form of Mamba-2's SSD algorithm (Dao & Gu, 2024, the
    ``segsum`` of its minimal reference): the lower-triangular matrix of differences ``P[t] - P[s]`` (``s <= t``),
    masked with ``-inf`` above the diagonal *before* the exponential, so that every factor ``exp(P[t] - P[s])``
    and ``exp(P[t])`` is at most 1 when ``log_a <= 0``; work ``O(L * chunk)`` per element of the state; the carry
    ``h0`` passes from chunk to chunk sequentially (``L / chunk`` steps).

    ``factored=True`` is the *cumulative-sum-of-log-decay* form ``h[t] = exp(P[t]) (h0 + sum_{s<=t} exp(-P[s]) x[s])``
    (two cumulative sums, ``O(L)`` work). It is kept only to show why it is not used: ``exp(-P)`` overflows in
    float32 once a chunk's summed ``delta |A|`` passes about 88 (``ln`` of float32's largest value), which
    Mamba-like step sizes reach within 64 steps.
    """
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be >= 1 (an int), got {chunk!r}")
    if log_a.shape != x.shape:
        raise ValueError(f"log_a must have the shape of x {tuple(x.shape)}, got {tuple(log_a.shape)}")
    L = x.shape[0]
    out = torch.empty_like(x)
    h0 = torch.zeros_like(x[0])
    for s in range(0, L, chunk):
        P = torch.cumsum(log_a[s : s + chunk], dim=0)  # (c, ...)
        if factored:
            h = torch.exp(P) * (h0 + torch.cumsum(torch.exp(-P) * x[s : s + chunk], dim=0))
        else:
            c = P.shape[0]
            seg = P[:, None] - P[None, :]  # (c, c, ...): seg[t, s] = P[t] - P[s] = sum_{s<r<=t} log_a[r]
            above = torch.ones(c, c, dtype=torch.bool, device=x.device).triu(1)  # s > t
            seg = seg.masked_fill(above.view(c, c, *([1] * (x.dim() - 1))), float("-inf"))
            h = torch.exp(P) * h0 + (torch.exp(seg) * x[s : s + chunk][None]).sum(1)  # (c, ...)
        out[s : s + chunk] = h
        h0 = h[-1]
    return out


def selective_scan_chunked(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False, chunk=64
):
    """Selective scan through :func:`chunked_scan` in its stable segment-sum form (Mamba-2's SSD chunking)."""
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    d, dt = u.shape[1], delta.dtype
    Bd, Cd = _per_channel(B, d, dt), _per_channel(C, d, dt)
    log_a = torch.einsum("bdl,dn->lbdn", delta, A.to(dt))
    x = torch.einsum("bdl,bdnl->lbdn", delta * u.to(dt), Bd)
    h = chunked_scan(log_a, x, chunk)
    y = torch.einsum("lbdn,bdnl->bdl", h, Cd)
    out = _finish(y, u, D, z, dtype_in)
    return (out, h[-1]) if return_last_state else out


# ----------------------------------------------------------------------------- dispatch


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False, impl=None
):
    """The library's selective scan (``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``'s signature).

    Args:
        u, delta: ``(batch, d, L)``; A: ``(d, n)`` real; B, C: ``(batch, n, L)`` or ``(batch, groups, n, L)``;
        D, delta_bias: ``(d,)`` or None; z: ``(batch, d, L)`` or None (output gate ``silu(z)``).
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return the final state ``(batch, d, n)``.
        impl: one of :data:`IMPLEMENTATIONS`; default ``"triton"`` for CUDA tensors, ``"loop"`` otherwise.
    """
    if impl is None:
        impl = "triton" if torch.is_tensor(u) and u.is_cuda else "loop"
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
    if impl == "triton":
        from lib.ssm.triton_scan import selective_scan_triton as fn
    else:
        fn = {
            "reference": selective_scan_ref,
            "loop": selective_scan_loop,
            "logdepth": selective_scan_logdepth,
            "chunked": selective_scan_chunked,
        }[impl]
    return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
