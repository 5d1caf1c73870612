"""Time-conditioned networks for diffusion: a small UNet for small images (class labels and cross-attention
context optional) and an MLP for 2D data.

Chapter: "Diffusion as stochastic differential equations" (``chapters/diffusion_sde.ipynb``); the Guidance
(labels; ``null_condition`` for condition dropout and guidance), Latent Diffusion (``context``, a learned null
context), and ControlNet (``encode`` / ``decode`` with the ``input_residual``, ``down_residuals`` and
``mid_residual`` hooks) chapters reuse it.

References: Ronneberger, Fischer and Brox, "U-Net", 2015; Ho et al. 2020 (appendix B: residual blocks with
a time embedding, GroupNorm, self-attention at low resolution); Rombach et al. 2022 (cross-attention to a
context sequence); Vaswani et al. 2017 (sinusoidal embedding).

Glossary
--------
x        ``(B, C, H, W)`` noisy image; ``t`` ``(B,)`` diffusion time in [0, 1]
emb      ``(B, time_dim)`` time embedding (+ class embedding when ``num_classes`` is set)
y        ``(B,)`` class labels; ``None`` or ``num_classes`` means "no label" (classifier-free guidance)
context  ``(B, L, context_dim)`` token sequence attended to by cross-attention (text, layouts, ...); ``None``
         means the learned null context (one token)
hs       skip activations of the encoder, consumed in reverse order by the decoder
null_condition(cond, drop)  the model's "unconditional" input: rows with ``drop[k]`` get the null ``k``
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lib.nn.attention import scaled_dot_product_attention


def timestep_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal features of ``scale * t``: ``(B,) -> (B, dim)``, frequencies ``10000^(-i / (dim/2))``."""
    if t.dim() != 1:
        raise ValueError(f"t must have shape (B,), got {tuple(t.shape)}")
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = scale * t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1).to(t.dtype if t.is_floating_point() else torch.float32)


class TimeEmbedding(nn.Module):
    """``t (B,)`` [and ``y (B,)``] -> ``(B, time_dim)``: sinusoid -> MLP, plus a learned class embedding whose
    last row (index ``num_classes``) is the null label."""

    def __init__(self, time_dim: int, num_classes: int | None = None) -> None:
        super().__init__()
        self.time_dim, self.num_classes = time_dim, num_classes
        self.mlp = nn.Sequential(nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.label = nn.Embedding(num_classes + 1, time_dim) if num_classes else None

    def forward(self, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        # the sinusoid and its MLP in (at least) float32, also under autocast: t near 1 in bf16 is off by 0.004
        l1, l2, w = self.mlp[0], self.mlp[2], self.mlp[0].weight
        dt = torch.promote_types(w.dtype, torch.float32)
        with torch.autocast(device_type=t.device.type, enabled=False):
            h = timestep_embedding(t.float(), self.time_dim).to(dt)
            h = nn.functional.linear(h, l1.weight.to(dt), l1.bias.to(dt))
            emb = nn.functional.linear(nn.functional.silu(h), l2.weight.to(dt), l2.bias.to(dt)).to(w.dtype)
        if self.label is not None:
            if y is None:
                y = torch.full((t.shape[0],), self.num_classes, dtype=torch.long, device=t.device)
            if y.shape != t.shape:
                raise ValueError(f"y must have shape {tuple(t.shape)}, got {tuple(y.shape)}")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) > self.num_classes):
                raise ValueError(f"y must hold labels in 0..{self.num_classes - 1} (or {self.num_classes}: no label), "
                                 f"got values in {int(y.min())}..{int(y.max())}")  # fmt: skip
            emb = emb + self.label(y)
        elif y is not None:
            raise ValueError("y given but the network has no class embedding (num_classes=None)")
        return emb


def null_labels(cond: dict, drop: dict, num_classes: int | None, n: int) -> dict:
    """``cond`` with ``y`` replaced by the null label ``num_classes`` where ``drop["y"]`` is True."""
    out = dict(cond)
    if "y" in drop:
        if num_classes is None:
            raise ValueError("cannot drop y: the network has no class embedding (num_classes=None)")
        y = cond.get("y")
        y = torch.full((n,), num_classes, dtype=torch.long, device=drop["y"].device) if y is None else y
        out["y"] = torch.where(drop["y"], torch.full_like(y, num_classes), y)
    return out


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c), c)


class ResBlock(nn.Module):
    """GN-SiLU-conv, add the projected embedding, GN-SiLU-dropout-conv, plus a (1x1) skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(_norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.emb = nn.Linear(emb_dim, c_out)
        self.out_layers = nn.Sequential(
            _norm(c_out), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(c_out, c_out, 3, padding=1)
        )
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.emb(emb)[:, :, None, None]  # (B, c_out, H, W)
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Self-attention over the ``H W`` positions, then (if ``context_dim``) cross-attention to ``context``."""

    def __init__(self, c: int, heads: int = 4, context_dim: int | None = None) -> None:
        super().__init__()
        if c % heads:
            raise ValueError(f"channels {c} must be divisible by heads {heads}")
        self.heads = heads
        self.norm, self.qkv, self.proj = _norm(c), nn.Linear(c, 3 * c), nn.Linear(c, c)
        if context_dim is not None:
            self.norm_x, self.q, self.kv = nn.LayerNorm(c), nn.Linear(c, c), nn.Linear(context_dim, 2 * c)
            self.proj_x = nn.Linear(c, c)

    def _split(self, z: torch.Tensor) -> torch.Tensor:  # (B, L, c) -> (B, heads, L, c / heads)
        return z.reshape(z.shape[0], z.shape[1], self.heads, -1).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        B, c, H, W = x.shape
        h = self.norm(x).reshape(B, c, H * W).transpose(1, 2)  # (B, HW, c)
        q, k, v = (self._split(z) for z in self.qkv(h).chunk(3, dim=-1))
        a = scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, H * W, c)
        h = x.reshape(B, c, H * W).transpose(1, 2) + self.proj(a)  # (B, HW, c)
        if hasattr(self, "kv"):
            if context is None:
                raise ValueError("this block has cross-attention (context_dim set): pass context (B, L, context_dim)")
            q = self._split(self.q(self.norm_x(h)))
            k, v = (self._split(z) for z in self.kv(context).chunk(2, dim=-1))
            mask = None if context_mask is None else context_mask[:, None, None, :].bool()  # (B, 1, 1, L)
            a = scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(B, H * W, c)
            h = h + self.proj_x(a)
        return h.transpose(1, 2).reshape(B, c, H, W)


@dataclass(frozen=True)
class UNetConfig:
    """A small UNet for ``(B, in_channels, H, W)`` images with ``H, W`` divisible by ``2^(len(channel_mults)-1)``."""

    in_channels: int = 1
    """Image channels (1 for digits, 4 for a latent)."""
    base_channels: int = 32
    """Channels at full resolution (not an MLP's ``hidden``: 32 gives a 0.7M-parameter UNet by default)."""
    channel_mults: tuple[int, ...] = (1, 2)
    """Channel multiplier per resolution level (each level after the first halves H and W)."""
    num_res_blocks: int = 1
    """Residual blocks per level in the encoder (the decoder has one more)."""
    attention_levels: tuple[int, ...] = (1,)
    """Levels (0 = full resolution) with attention blocks; the middle always has one."""
    heads: int = 4
    """Attention heads."""
    time_dim: int = 128
    """Width of the time (and class) embedding."""
    num_classes: int | None = None
    """Class-conditional when set (label ``num_classes`` = no label)."""
    context_dim: int | None = None
    """Cross-attention to a ``(B, L, context_dim)`` context when set."""
    dropout: float = 0.0
    """Dropout inside residual blocks."""

    def __post_init__(self) -> None:
        if not isinstance(self.base_channels, int) or self.base_channels < 1:
            raise ValueError(f"base_channels must be a positive int, got {self.base_channels!r}")
        if not self.channel_mults or any(m < 1 for m in self.channel_mults):
            raise ValueError(f"channel_mults must be a non-empty tuple of positive ints, got {self.channel_mults!r}")
        if any(self.base_channels * m % self.heads for m in self.channel_mults):
            raise ValueError(f"base_channels * each channel_mult must be divisible by heads={self.heads}")


class UNet(nn.Module):
    """``model(x, t, y=None, context=None) -> (B, in_channels, H, W)``: the network output (eps, x0, v or score,
    as the loss defines it)."""

    def __init__(self, config: UNetConfig = UNetConfig()) -> None:  # noqa: B008 (frozen dataclass)
        super().__init__()
        self.config = cfg = config
        C, E = cfg.base_channels, cfg.time_dim
        self.embed = TimeEmbedding(E, cfg.num_classes)
        self.conv_in = nn.Conv2d(cfg.in_channels, C, 3, padding=1)
        attn = lambda c, lvl: (
            AttentionBlock(c, cfg.heads, cfg.context_dim) if lvl in cfg.attention_levels else nn.Identity()
        )
        self.down, chans, c = nn.ModuleList(), [C], C
        for lvl, m in enumerate(cfg.channel_mults):
            for _ in range(cfg.num_res_blocks):
                self.down.append(nn.ModuleList([ResBlock(c, C * m, E, cfg.dropout), attn(C * m, lvl)]))
                c = C * m
                chans.append(c)
            if lvl < len(cfg.channel_mults) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)]))
                chans.append(c)
        self.mid = nn.ModuleList([ResBlock(c, c, E, cfg.dropout), AttentionBlock(c, cfg.heads, cfg.context_dim),
                                  ResBlock(c, c, E, cfg.dropout)])  # fmt: skip
        self.up = nn.ModuleList()
        for lvl, m in reversed(list(enumerate(cfg.channel_mults))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(nn.ModuleList([ResBlock(c + chans.pop(), C * m, E, cfg.dropout), attn(C * m, lvl)]))
                c = C * m
            if lvl > 0:
                self.up.append(
                    nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)])
                )
        self.out = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, cfg.in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        if cfg.context_dim is not None:  # the learned "no text" context: one token
            self.null_context = nn.Parameter(torch.zeros(1, 1, cfg.context_dim))

    def null_condition(self, cond: dict, drop: dict) -> dict:
        """``cond`` with rows where ``drop[k]`` (``(B,)`` bool) is True replaced by the null ``k``: label
        ``num_classes`` for ``y``, the learned null token for ``context`` (its ``context_mask`` rows all True)."""
        unknown = set(drop) - {"y", "context", "context_mask"}  # the mask follows context's own drop
        if unknown:
            raise ValueError(f"UNet can drop 'y' and 'context', not {sorted(unknown)}")
        n = next(iter(drop.values())).shape[0] if drop else 0
        out = null_labels(cond, drop, self.config.num_classes, n)
        if "context" in drop:
            if self.config.context_dim is None:
                raise ValueError("cannot drop context: the UNet has no cross-attention (context_dim=None)")
            ctx, d = cond.get("context"), drop["context"]
            if ctx is None:
                out["context"] = self.null_context.expand(n, 1, -1)
                out.pop("context_mask", None)
                return out
            out["context"] = torch.where(d[:, None, None], self.null_context.to(ctx.dtype).expand_as(ctx), ctx)
            if cond.get("context_mask") is not None:
                out["context_mask"] = cond["context_mask"].bool() | d[:, None]
        return out

    def _check(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if x.dim() != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"x must have shape (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        f = 2 ** (len(cfg.channel_mults) - 1)
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"H and W must be divisible by {f}, got {tuple(x.shape[2:])}")
        t = torch.as_tensor(t, device=x.device, dtype=torch.promote_types(x.dtype, torch.float32))
        return t.expand(x.shape[0]) if t.dim() == 0 else t

    def _block(self, blk, h, emb, context, context_mask):
        h = blk[0](h, emb)
        return blk[1](h, context, context_mask) if isinstance(blk[1], AttentionBlock) else h

    def _context(self, x, context, context_mask):
        if self.config.context_dim is not None and context is None:
            return self.null_context.to(x.dtype).expand(x.shape[0], 1, -1), None
        return context, context_mask

    def encode(self, x, t, y=None, context=None, context_mask=None, input_residual=None):
        """Encoder + middle: returns ``(h, hs, emb)``. ControlNet runs a trainable copy of this half and adds
        its condition embedding after ``conv_in`` through ``input_residual`` ``(B, base_channels, H, W)``."""
        emb = self.embed(self._check(x, t), y)
        context, context_mask = self._context(x, context, context_mask)
        h = self.conv_in(x)
        if input_residual is not None:
            if input_residual.shape != h.shape:
                raise ValueError(f"input_residual must have shape {tuple(h.shape)}, got {tuple(input_residual.shape)}")
            h = h + input_residual
        hs = [h]
        for blk in self.down:
            h = blk[0](h) if len(blk) == 1 else self._block(blk, h, emb, context, context_mask)
            hs.append(h)
        h = self.mid[0](h, emb)
        h = self.mid[1](h, context, context_mask)
        return self.mid[2](h, emb), hs, emb

    def decode(self, h, hs, emb, context=None, context_mask=None, down_residuals=None, mid_residual=None):
        """Decoder: consumes the skips ``hs`` (plus optional ``down_residuals``, one per skip, and a
        ``mid_residual``, as ControlNet adds them)."""
        context, context_mask = self._context(h, context, context_mask)
        if down_residuals is not None:
            if len(down_residuals) != len(hs):
                raise ValueError(f"down_residuals must have {len(hs)} tensors, got {len(down_residuals)}")
            hs = [a + b for a, b in zip(hs, down_residuals, strict=True)]
        if mid_residual is not None:
            h = h + mid_residual
        hs = list(hs)
        for blk in self.up:
            if isinstance(blk[0], ResBlock):
                h = self._block(blk, torch.cat([h, hs.pop()], dim=1), emb, context, context_mask)
            else:
                h = blk[1](blk[0](h))
        return self.out(h)

    def forward(self, x, t, y=None, context=None, context_mask=None, down_residuals=None, mid_residual=None):
        """``(B, C, H, W)``; ``down_residuals`` / ``mid_residual`` are ControlNet's additions (see ``decode``)."""
        h, hs, emb = self.encode(x, t, y, context, context_mask)
        return self.decode(h, hs, emb, context, context_mask, down_residuals, mid_residual)


@dataclass(frozen=True)
class MLPConfig:
    """A time-conditioned MLP for ``(B, dim)`` data."""

    dim: int = 2
    """Data dimension."""
    hidden: int = 128
    """Hidden width."""
    depth: int = 3
    """Number of hidden layers."""
    time_dim: int = 64
    """Width of the time embedding (added to every hidden layer)."""
    num_classes: int | None = None
    """Class-conditional when set (label ``num_classes`` = no label)."""
    image_shape: tuple[int, ...] | None = None
    """When set (e.g. ``(1, 8, 8)``), inputs of this shape are flattened and outputs reshaped back."""

    def __post_init__(self) -> None:
        if self.image_shape is not None and math.prod(self.image_shape) != self.dim:
            raise ValueError(f"image_shape {self.image_shape} must have dim={self.dim} elements")


class TimeMLP(nn.Module):
    """``model(x, t, y=None) -> x.shape``: residual blocks ``h += W2 SiLU(W1 LN(h) + U emb)``, linear
    read-out (zero-initialised). Takes ``(B, dim)`` or, with ``image_shape``, ``(B, *image_shape)``."""

    def __init__(self, config: MLPConfig = MLPConfig()) -> None:  # noqa: B008 (frozen dataclass)
        super().__init__()
        self.config = cfg = config
        H = cfg.hidden
        self.embed = TimeEmbedding(cfg.time_dim, cfg.num_classes)
        self.inp = nn.Linear(cfg.dim, H)
        self.norms = nn.ModuleList(nn.LayerNorm(H) for _ in range(cfg.depth))
        self.w1 = nn.ModuleList(nn.Linear(H, H) for _ in range(cfg.depth))
        self.emb = nn.ModuleList(nn.Linear(cfg.time_dim, H) for _ in range(cfg.depth))
        self.w2 = nn.ModuleList(nn.Linear(H, H) for _ in range(cfg.depth))
        self.out = nn.Sequential(nn.LayerNorm(H), nn.Linear(H, cfg.dim))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)

    def null_condition(self, cond: dict, drop: dict) -> dict:
        """``cond`` with ``y`` replaced by the null label ``num_classes`` where ``drop["y"]`` is True."""
        if set(drop) - {"y"}:
            raise ValueError(f"TimeMLP can drop only 'y', not {sorted(set(drop) - {'y'})}")
        n = drop["y"].shape[0] if "y" in drop else 0
        return null_labels(cond, drop, self.config.num_classes, n)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        shape = (cfg.dim,) if cfg.image_shape is None else tuple(cfg.image_shape)
        if tuple(x.shape[1:]) != shape:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, shape))}), got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device, dtype=torch.promote_types(x.dtype, torch.float32))
        emb = self.embed(t.expand(x.shape[0]) if t.dim() == 0 else t, y)  # (B, time_dim)
        h = self.inp(x.reshape(x.shape[0], cfg.dim))  # (B, H)
        for norm, w1, proj, w2 in zip(self.norms, self.w1, self.emb, self.w2, strict=True):
            h = h + w2(nn.functional.silu(w1(norm(h)) + proj(emb)))
        return self.out(h).reshape(x.shape)
