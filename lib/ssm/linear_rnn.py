"""The linear-RNN family: the LRU, RetNet's retention in its three forms, and the semiseparable-matrix (SSD) view
of a selective SSM.

Orvieto et al. (2023), "Resurrecting Recurrent Neural Networks for Long Sequences" (LRU); Sun et al. (2023),
"Retentive Network" (RetNet), section 2.1; Dao & Gu (2024), "Transformers are SSMs" (Mamba-2, SSD), section 3.
Chapter: "State space models" (``chapters/ssm.ipynb``).

Glossary
--------
lambda_          LRU's complex diagonal ``exp(-exp(nu) + i exp(theta))``; ``gamma = sqrt(1 - |lambda|^2)``
gamma (RetNet)   scalar decay of a retention head, ``0 < gamma < 1``
D (RetNet)       causal decay mask ``D[n, m] = gamma^(n - m)`` for ``n >= m`` else 0
M (SSD)          ``y = M u``: ``M[t, s] = sum_n C[t, n] exp(sum_{r=s+1}^{t} delta[r] A[n]) delta[s] B[s, n] u``-weights
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lib.ssm.scan import logdepth_scan


class LRU(nn.Module):
    """Linear Recurrent Unit: ``h_t = lambda * h_{t-1} + gamma * (B x_t)``, ``y_t = Re(C h_t) + D * x_t``.

    ``lambda`` is initialised uniformly on the ring ``r_min <= |lambda| <= r_max`` with phases in
    ``[0, max_phase]``. ``forward(x (batch, L, H)) -> (batch, L, H)``; the recurrence runs as a log-depth
    parallel scan over complex numbers (:func:`lib.ssm.scan.logdepth_scan`).
    """

    def __init__(self, H: int, N: int, r_min: float = 0.9, r_max: float = 0.999, max_phase: float = 2 * math.pi):
        super().__init__()
        if not 0 <= r_min < r_max <= 1:
            raise ValueError(f"need 0 <= r_min < r_max <= 1, got {r_min}, {r_max}")
        u1, u2 = torch.rand(N), torch.rand(N)
        # |lambda|^2 uniform on [r_min^2, r_max^2]: nu = log(-log|lambda|)
        self.nu_log = nn.Parameter(torch.log(-0.5 * torch.log(u1 * (r_max**2 - r_min**2) + r_min**2)))
        self.theta_log = nn.Parameter(torch.log(max_phase * u2))
        self.B = nn.Parameter(torch.randn(N, H, 2) / math.sqrt(2 * H))
        self.C = nn.Parameter(torch.randn(H, N, 2) / math.sqrt(N))
        self.D = nn.Parameter(torch.randn(H))

    @property
    def lambda_(self) -> torch.Tensor:
        return torch.exp(torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = self.lambda_  # (N,)
        gamma = torch.sqrt(1 - lam.abs() ** 2)
        Bu = (x.to(torch.complex64) @ torch.view_as_complex(self.B).T) * gamma  # (batch, L, N)
        h = logdepth_scan(lam.expand_as(Bu).transpose(0, 1), Bu.transpose(0, 1)).transpose(0, 1)
        return (h @ torch.view_as_complex(self.C).T).real + self.D * x

    def step(self, x: torch.Tensor, h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One recurrent step: ``x (batch, H)``, state ``h (batch, N)`` complex -> ``(y, h)``."""
        lam = self.lambda_
        gamma = torch.sqrt(1 - lam.abs() ** 2)
        Bu = (x.to(torch.complex64) @ torch.view_as_complex(self.B).T) * gamma
        h = Bu if h is None else lam * h + Bu
        return (h @ torch.view_as_complex(self.C).T).real + self.D * x, h


def _check_qkv(q, k, v, gamma) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not torch.is_tensor(t) or t.dim() != 3:
            raise ValueError(f"{name} must be a (batch, L, dim) tensor, got {getattr(t, 'shape', type(t).__name__)}")
    if q.shape != k.shape or q.shape[:2] != v.shape[:2]:
        raise ValueError(f"q, k must share (batch, L, d_k) and v (batch, L): {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")  # fmt: skip
    if not 0 < gamma < 1:
        raise ValueError(f"gamma must be in (0, 1), got {gamma!r}")


def decay_mask(L: int, gamma: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``D[n, m] = gamma^(n-m)`` if ``n >= m`` else 0, shape ``(L, L)``."""
    n = torch.arange(L, dtype=dtype)
    diff = n[:, None] - n[None, :]
    return torch.where(diff >= 0, gamma ** diff.clamp(min=0), torch.zeros((), dtype=dtype))


def retention_parallel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gamma: float) -> torch.Tensor:
    """Parallel form (training): ``(Q K^T * D) V``. q, k: ``(batch, L, d_k)``; v: ``(batch, L, d_v)``."""
    _check_qkv(q, k, v, gamma)
    return ((q @ k.transpose(1, 2)) * decay_mask(q.shape[1], gamma, q.dtype)) @ v


def retention_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gamma: float) -> torch.Tensor:
    """Recurrent form (inference): ``S_n = gamma S_{n-1} + k_n^T v_n``, ``o_n = q_n S_n``; state ``(d_k, d_v)``."""
    _check_qkv(q, k, v, gamma)
    S = q.new_zeros(q.shape[0], q.shape[2], v.shape[2])
    out = []
    for n in range(q.shape[1]):
        S = gamma * S + k[:, n, :, None] * v[:, n, None, :]
        out.append((q[:, n, None, :] @ S).squeeze(1))
    return torch.stack(out, 1)


def retention_chunkwise(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gamma: float, chunk: int = 16):
    """Chunkwise form: parallel inside chunks of ``chunk`` steps, recurrent across them::

    o_[i] = (Q_[i] K_[i]^T * D) V_[i]  +  xi * (Q_[i] R_{i-1}),    xi_j = gamma^(j+1)
    R_i   = K_[i]^T (zeta * V_[i]) + gamma^B R_{i-1},              zeta_j = gamma^(B - j - 1)
    """
    _check_qkv(q, k, v, gamma)
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    batch, L, _ = q.shape
    R = q.new_zeros(batch, q.shape[2], v.shape[2])
    out = []
    for s in range(0, L, chunk):
        qc, kc, vc = q[:, s : s + chunk], k[:, s : s + chunk], v[:, s : s + chunk]
        B = qc.shape[1]
        j = torch.arange(B, dtype=q.dtype)
        inner = ((qc @ kc.transpose(1, 2)) * decay_mask(B, gamma, q.dtype)) @ vc
        out.append(inner + (gamma ** (j + 1))[:, None] * (qc @ R))
        R = kc.transpose(1, 2) @ ((gamma ** (B - j - 1))[:, None] * vc) + gamma**B * R
    return torch.cat(out, 1)


def semiseparable_matrix(delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """The matrix ``M (batch, d, L, L)`` with ``y = M u`` for the selective SSM (no ``D``, no gate)::

        M[t, s] = sum_n C[t, n] exp(A[n] sum_{r=s+1}^{t} delta[r]) delta[s] B[s, n]    (s <= t), else 0

    Inputs as :func:`lib.ssm.scan.selective_scan_ref` (delta after softplus; B, C ``(batch, n, L)``). Every block
    of ``M`` strictly below the diagonal has rank at most ``n``: ``M`` is ``n``-semiseparable (the SSD view).
    """
    if delta.dim() != 3 or B.dim() != 3 or C.dim() != 3 or A.dim() != 2:
        raise ValueError("need delta (batch, d, L), A (d, n), B and C (batch, n, L)")
    cum = torch.cumsum(delta, -1)  # (batch, d, L)
    seg = cum[..., :, None] - cum[..., None, :]  # sum_{r=s+1}^{t} delta[r], (batch, d, L_t, L_s)
    L = delta.shape[-1]
    causal = torch.tril(torch.ones(L, L, dtype=torch.bool, device=delta.device))
    log_decay = seg[..., None] * A[None, :, None, None, :]
    decay = torch.exp(log_decay.masked_fill(~causal[..., None], -torch.inf))
    # decay: (batch, d, L_t, L_s, n)
    M = torch.einsum("btn,bdtsn,bsn->bdts", C.transpose(1, 2), decay, B.transpose(1, 2))
    return M * delta[:, :, None, :]
