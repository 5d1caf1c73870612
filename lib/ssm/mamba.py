"""The Mamba block and a small language model built from it, with the SSM core selectable: S6 (selective) or
S4D (time-invariant). The two share every other part of the block; their cores differ in more than selectivity:
S6's ``delta, B, C`` are functions of the input on a real diagonal ``A`` (S4D-Real), while S4D is a fixed complex
diagonal kernel (S4D-Lin initialisation) with its own step sizes and parameter count.

Gu & Dao (2023), "Mamba", section 3.4 and figure 3. Chapter: "State space models" (``chapters/ssm.ipynb``).

Glossary (paper symbols, shapes for input ``(batch, L, d_model)``)
--------
d_inner     expanded width ``E * d_model`` (E = 2)
x, z        the two halves of the in-projection, ``(batch, L, d_inner)``; ``z`` is the gate
delta       step sizes ``softplus(dt_proj(x_proj(x)) + bias)``, ``(batch, d_inner, L)`` (S6: input-dependent)
A           ``-exp(A_log)``, ``(d_inner, N)``, real and negative (S4D-Real initialisation ``-(1..N)``)
B, C        ``(batch, N, L)``, projections of ``x`` (S6)
D           skip ``(d_inner,)``
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lib.ssm.s4d import S4DKernel
from lib.ssm.scan import selective_scan

MIXERS = ("s6", "s4d")


@dataclass(frozen=True)
class MambaConfig:
    """Sizes of :class:`MambaLM` (and of each :class:`MambaBlock`)."""

    vocab_size: int
    """Tokens."""
    d_model: int = 64
    """Residual-stream width."""
    n_layers: int = 2
    """Mamba blocks."""
    d_state: int = 16
    """State size N (real dimension; S4D uses N/2 complex modes)."""
    expand: int = 2
    """``d_inner = expand * d_model``."""
    d_conv: int = 4
    """Width of the causal depthwise convolution."""
    mixer: str = "s6"
    """SSM core: ``"s6"`` (selective scan) or ``"s4d"`` (LTI, FFT convolution)."""
    scan_impl: str | None = None
    """``impl`` passed to :func:`lib.ssm.scan.selective_scan` (None: its default)."""
    dt_rank: int = 0
    """Rank of the delta projection (0: ``ceil(d_model / 16)``)."""
    dt_min: float = 1e-3
    """Smallest initial step size (S6: ``softplus(bias)`` is drawn log-uniform in ``[dt_min, dt_max]``)."""
    dt_max: float = 0.1
    """Largest initial step size."""
    embed_std: float | None = None
    """Standard deviation of the embedding's normal initialisation (None: torch's default, 1; Mamba uses 0.02)."""

    def __post_init__(self) -> None:
        if self.mixer not in MIXERS:
            raise ValueError(f"mixer must be one of {MIXERS}, got {self.mixer!r}")
        for name in ("vocab_size", "d_model", "n_layers", "d_state", "expand", "d_conv"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={self.dt_min!r}, dt_max={self.dt_max!r}")
        if self.embed_std is not None and not self.embed_std > 0:
            raise ValueError(f"embed_std must be positive or None, got {self.embed_std!r}")
        if self.dt_rank == 0:
            object.__setattr__(self, "dt_rank", math.ceil(self.d_model / 16))

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model


class MambaBlock(nn.Module):
    """in-projection -> (causal depthwise conv -> SiLU -> SSM) * SiLU(gate) -> out-projection.

    ``forward(x (batch, L, d_model)) -> (batch, L, d_model)``.
    """

    def __init__(self, c: MambaConfig) -> None:
        super().__init__()
        self.config = c
        E, N, R = c.d_inner, c.d_state, c.dt_rank
        self.in_proj = nn.Linear(c.d_model, 2 * E, bias=False)
        self.conv1d = nn.Conv1d(E, E, c.d_conv, groups=E, padding=c.d_conv - 1)
        self.out_proj = nn.Linear(E, c.d_model, bias=False)
        self.D = nn.Parameter(torch.ones(E))
        if c.mixer == "s6":
            self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
            self.dt_proj = nn.Linear(R, E, bias=True)
            # delta initialised log-uniform in [dt_min, dt_max] through the bias (softplus^-1)
            dt = torch.exp(torch.rand(E) * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min))
            with torch.no_grad():
                self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1))
        else:
            self.ssm = S4DKernel(E, N, init="lin")

    def ssm_core(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``(x, z) (batch, d_inner, L) -> y * silu(z)``: the selective scan (S6) or the S4D convolution."""
        c = self.config
        if c.mixer == "s4d":
            return (self.ssm(x) + self.D[:, None] * x) * F.silu(z)
        x_dbl = self.x_proj(x.transpose(1, 2))  # (batch, L, R + 2N)
        dt, B, C = x_dbl.split([c.dt_rank, c.d_state, c.d_state], dim=-1)
        delta = (dt @ self.dt_proj.weight.T).transpose(1, 2)  # (batch, d_inner, L), bias added in the scan
        A = -torch.exp(self.A_log.float())
        return selective_scan(
            x, delta, A, B.transpose(1, 2), C.transpose(1, 2), self.D.float(), z,
            delta_bias=self.dt_proj.bias.float(), delta_softplus=True, impl=c.scan_impl,
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        L = x.shape[1]
        x, z = self.in_proj(x).chunk(2, dim=-1)  # (batch, L, d_inner) each
        x = self.conv1d(x.transpose(1, 2))[..., :L]  # causal: drop the right padding, (batch, d_inner, L)
        y = self.ssm_core(F.silu(x), z.transpose(1, 2))
        return self.out_proj(y.transpose(1, 2))


class MambaLM(nn.Module):
    """Embedding -> ``n_layers`` x (x + MambaBlock(RMSNorm(x))) -> RMSNorm -> linear head.

    ``forward(tokens (batch, L)) -> logits (batch, L, vocab_size)``; causal at every layer.
    """

    def __init__(self, c: MambaConfig) -> None:
        super().__init__()
        self.config = c
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        if c.embed_std is not None:
            nn.init.normal_(self.embed.weight, std=c.embed_std)
        self.norms = nn.ModuleList(nn.RMSNorm(c.d_model) for _ in range(c.n_layers))
        self.blocks = nn.ModuleList(MambaBlock(c) for _ in range(c.n_layers))
        self.norm_f = nn.RMSNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(tokens) or tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(f"tokens must be a (batch, L) int64 tensor, got {getattr(tokens, 'shape', tokens)}")
        x = self.embed(tokens)
        for norm, block in zip(self.norms, self.blocks, strict=True):
            x = x + block(norm(x))
        return self.head(self.norm_f(x))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
