"""MMDiT, Stable Diffusion 3's multimodal diffusion transformer (and, without a text stream, a DiT).

Chapter: "Stable Diffusion 3" (``chapters/sd3.ipynb``). The image is cut into ``p x p`` patches (one token
each), the caption is a token sequence; each block keeps *separate weights* per stream (image, text) but runs
*one attention* over the concatenated sequence ``[text; image]``, so text attends to image and to itself in every
block. Every sublayer is modulated by adaLN-Zero from a vector ``c = embed(t) [+ embed(pooled text)] [+ embed(y)]``:
``x + gate * f((1 + scale) * LN(x) + shift)`` with ``(shift, scale, gate)`` linear in ``c`` and zero at
initialisation, so each block starts as the identity.

References: Esser et al., "Scaling Rectified Flow Transformers for High-Resolution Image Synthesis", 2024
(section 4 and figure 2: MMDiT; section 5.3.2: QK-normalisation, cropped positional embeddings);
Peebles and Xie, "Scalable Diffusion Models with Transformers" (DiT), 2023 (patchify, adaLN-Zero);
Dehghani et al. 2023 (QK-norm); Zhang and Sennrich 2019 (RMSNorm).

Glossary
--------
x          ``(B, C, H, W)`` noisy latent; ``t`` ``(B,)`` time in [0, 1]
p          patch size; ``h, w = H / p, W / p`` the token grid; ``N = h w`` image tokens of width ``p p C``
context    ``(B, L, context_dim)`` text tokens; ``context_mask`` ``(B, L)`` True = a real token
pooled     ``(B, pooled_dim)`` pooled text embedding (SD3: CLIP's pooled output), added to ``c``
c          ``(B, d)`` conditioning vector driving every adaLN modulation
q, k       per-head queries and keys ``(B, heads, L + N, d / heads)``; QK-norm = RMSNorm on each
max_logit  largest attention logit ``q . k / sqrt(d_head)`` seen in the last forward (recorded on request)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lib.nn.attention import scaled_dot_product_attention
from lib.nn.positional import sinusoidal_encoding
from lib.nn.unet import TimeEmbedding, null_labels


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, C, H, W) -> (B, h w, p p C)``: row-major tokens, each patch flattened in ``(p, p, C)`` order."""
    if not torch.is_tensor(x) or x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got {getattr(x, 'shape', x)}")
    B, C, H, W = x.shape
    if not isinstance(p, int) or p < 1 or H % p or W % p:
        raise ValueError(f"p must be a positive int dividing H={H} and W={W}, got {p!r}")
    x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, p, C)
    return x.reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(tokens: torch.Tensor, p: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, h w, p p C) -> (B, C, h p, w p)``."""
    if not torch.is_tensor(tokens) or tokens.dim() != 3 or tokens.shape[1] != h * w or tokens.shape[2] % (p * p):
        raise ValueError(f"tokens must be (B, {h}*{w}, p*p*C) with p={p}, got {getattr(tokens, 'shape', tokens)}")
    B, C = tokens.shape[0], tokens.shape[2] // (p * p)
    x = tokens.reshape(B, h, w, p, p, C).permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, p)
    return x.reshape(B, C, h * p, w * p)


def pos_embed_2d(
    h: int, w: int, d_model: int, base_size: float | None = None, interpolation_scale: float = 1.0
) -> torch.Tensor:
    """2D sin-cos code of an ``h x w`` token grid, ``(h w, d_model)`` float32, in the layout of SD3 / diffusers.

    Row ``i w + j`` is ``[e(x_j), e(y_i)]``: the first half encodes the column, the second the row, each half
    ``[sin(pos omega), cos(pos omega)]`` (blocks, not the interleaved pairs of :func:`lib.nn.positional.sincos_2d`;
    the same frequencies). Positions are ``y_i = i base_size / (h s)``, ``x_j = j base_size / (w s)`` with
    ``s = interpolation_scale`` (default ``base_size``: the grid size, integer positions): a larger grid with the
    same ``base_size`` samples the same range more finely (interpolation).
    """
    if not isinstance(d_model, int) or d_model % 4:
        raise ValueError(f"d_model must be divisible by 4, got {d_model!r}")
    if not isinstance(h, int) or not isinstance(w, int) or h < 1 or w < 1:
        raise ValueError(f"h and w must be positive ints, got {h!r}, {w!r}")
    if not interpolation_scale > 0 or (base_size is not None and not base_size > 0):
        raise ValueError(f"base_size, interpolation_scale must be positive: {base_size!r}, {interpolation_scale!r}")

    def half(n: int) -> torch.Tensor:  # (n, d/2): [sin block, cos block]
        pos = torch.arange(n, dtype=torch.float64) * ((base_size or n) / n) / interpolation_scale
        pe = sinusoidal_encoding(pos, d_model // 2, dtype=torch.float64)  # interleaved (sin, cos) pairs
        return pe.reshape(n, d_model // 4, 2).transpose(1, 2).reshape(n, d_model // 2)

    cols, rows = half(w), half(h)
    grid = torch.cat([cols[None].expand(h, -1, -1), rows[:, None].expand(-1, w, -1)], dim=-1)  # (h, w, d)
    return grid.reshape(h * w, d_model).float()


def crop_pos_embed(table: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The centred ``h x w`` window of a square ``(M M, d)`` table, ``(h w, d)`` (SD3's ``pos_embed_max_size``)."""
    M = math.isqrt(table.shape[0])
    if table.dim() != 2 or M * M != table.shape[0]:
        raise ValueError(f"table must be (M*M, d), got {tuple(table.shape)}")
    if h > M or w > M:
        raise ValueError(f"a {h}x{w} token grid exceeds the {M}x{M} positional table: pass a smaller image or "
                         "set pos_interpolate=True")  # fmt: skip
    top, left = (M - h) // 2, (M - w) // 2
    return table.reshape(M, M, -1)[top : top + h, left : left + w].reshape(h * w, -1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x (B, n, d) * (1 + scale (B, d)) + shift (B, d)``."""
    return x * (1 + scale[:, None]) + shift[:, None]


def joint_attention(qs, ks, vs, key_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
    """One attention over the concatenated streams: ``qs[i] (B, heads, n_i, d_h)``; returns the per-stream outputs.

    ``key_mask`` ``(B, sum n_i)`` True = may be attended to (padding text tokens are False).
    """
    q, k, v = torch.cat(qs, dim=2), torch.cat(ks, dim=2), torch.cat(vs, dim=2)
    mask = None if key_mask is None else key_mask[:, None, None, :].bool()  # (B, 1, 1, n)
    return list(scaled_dot_product_attention(q, k, v, attn_mask=mask).split([t.shape[2] for t in qs], dim=2))


class Stream(nn.Module):
    """One modality's weights in a joint block: adaLN, qkv (+ QK RMSNorm), output projection, MLP.

    ``pre_only``: only the adaLN and qkv (SD3's text stream in the last block, whose outputs nothing reads).
    """

    def __init__(self, d: int, heads: int, mlp_ratio: float, qk_norm: bool, pre_only: bool = False) -> None:
        super().__init__()
        self.heads, self.pre_only = heads, pre_only
        # (shift, scale) for the attention input, then gate, and (shift, scale, gate) for the MLP
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(d, (2 if pre_only else 6) * d))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)  # adaLN-Zero: gates start at 0
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d)
        self.q_norm = nn.RMSNorm(d // heads, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(d // heads, eps=1e-6) if qk_norm else nn.Identity()
        if not pre_only:
            self.proj, self.norm2 = nn.Linear(d, d), nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
            hidden = int(d * mlp_ratio)
            self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))

    def pre(self, x: torch.Tensor, c: torch.Tensor):
        """Per-head ``q, k, v (B, heads, n, d_h)`` of the modulated ``x (B, n, d)``, and the rest of the modulation."""
        sh1, sc1, *mod = self.ada(c).chunk(2 if self.pre_only else 6, dim=-1)  # each (B, d)
        B, n, d = x.shape
        qkv = self.qkv(modulate(self.norm1(x), sh1, sc1)).reshape(B, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, n, d_h)
        if isinstance(self.q_norm, nn.RMSNorm):  # normalise in float32 (under bf16 autocast too), then back
            q, k = self.q_norm(q.float()).to(v.dtype), self.k_norm(k.float()).to(v.dtype)
        return q, k, v, mod

    def post(self, x: torch.Tensor, a: torch.Tensor, mod) -> torch.Tensor | None:
        """Gated residuals: ``x + g1 proj(a)``, then ``+ g2 MLP(modulated LN)``; ``a (B, heads, n, d_h)``."""
        if self.pre_only:
            return None
        g1, sh2, sc2, g2 = mod
        x = x + g1[:, None] * self.proj(a.transpose(1, 2).reshape(x.shape))
        return x + g2[:, None] * self.mlp(modulate(self.norm2(x), sh2, sc2))


class JointBlock(nn.Module):
    """MMDiT block (figure 2 of Esser et al.): one :class:`Stream` per modality, one joint attention.

    ``text=False`` gives a DiT block (image tokens only); ``last=True`` makes the text stream ``pre_only`` and
    returns ``None`` for it. With ``record_logits = True`` the forward stores the largest attention logit in
    ``max_logit``.
    """

    def __init__(
        self, d: int, heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False, text: bool = True, last: bool = False
    ) -> None:
        super().__init__()
        if d % heads:
            raise ValueError(f"d_model={d} must be divisible by heads={heads}")
        self.x_stream = Stream(d, heads, mlp_ratio, qk_norm)
        self.c_stream = Stream(d, heads, mlp_ratio, qk_norm, pre_only=last) if text else None
        self.record_logits, self.max_logit = False, float("nan")

    def forward(self, x, c, context=None, key_mask=None):
        """``x (B, N, d)``, ``c (B, d)``, ``context (B, L, d)``, ``key_mask (B, L + N)`` -> ``(x, context)``."""
        streams = [(self.x_stream, x)] if self.c_stream is None else [(self.c_stream, context), (self.x_stream, x)]
        pre = [s.pre(z, c) for s, z in streams]
        qs, ks, vs = [p[0] for p in pre], [p[1] for p in pre], [p[2] for p in pre]
        if self.record_logits:
            with torch.no_grad():
                q, k = torch.cat(qs, 2), torch.cat(ks, 2)
                self.max_logit = float((q @ k.transpose(-2, -1)).float().amax() / math.sqrt(q.shape[-1]))
        outs = joint_attention(qs, ks, vs, key_mask)
        new = [s.post(z, a, p[3]) for (s, z), a, p in zip(streams, outs, pre, strict=True)]
        return (new[0], None) if self.c_stream is None else (new[1], new[0])


@dataclass(frozen=True)
class MMDiTConfig:
    """A small MMDiT for ``(B, in_channels, input_size, input_size)`` latents."""

    in_channels: int = 4
    """Latent channels."""
    input_size: int = 8
    """Training latent height = width; ``input_size / patch_size`` is the positional ``base_size``."""
    patch_size: int = 2
    """Patch side ``p``."""
    d_model: int = 128
    """Token width ``d`` (divisible by 4 and by ``heads``)."""
    depth: int = 4
    """Number of joint blocks."""
    heads: int = 4
    """Attention heads."""
    mlp_ratio: float = 4.0
    """MLP hidden width / ``d``."""
    context_dim: int | None = None
    """Text token width; ``None``: no text stream (a DiT)."""
    pooled_dim: int | None = None
    """Width of the pooled text embedding added to ``c``; ``None``: none."""
    num_classes: int | None = None
    """Class-conditional (label ``num_classes`` = no label) when set."""
    qk_norm: bool = False
    """RMSNorm on per-head queries and keys (SD3 section 5.3.2)."""
    pos_max_size: int | None = None
    """Side of the square positional table (in tokens), cropped centrally; ``None``: the training grid."""
    pos_interpolate: bool = False
    """For a grid larger than the table, interpolate positions into it instead of raising."""
    interpolation_scale: float = 1.0
    """Divides the positions (diffusers' ``interpolation_scale``)."""

    def __post_init__(self) -> None:
        if self.input_size % self.patch_size:
            raise ValueError(f"patch_size={self.patch_size} must divide input_size={self.input_size}")
        if self.d_model % 4 or self.d_model % self.heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by 4 and by heads={self.heads}")
        if self.pos_max_size is not None and self.pos_max_size < self.input_size // self.patch_size:
            raise ValueError(f"pos_max_size={self.pos_max_size} is smaller than the training grid")
        if self.pooled_dim is not None and self.context_dim is None:
            raise ValueError("pooled_dim needs a text stream (context_dim)")


class MMDiT(nn.Module):
    """``model(x, t, y=None, context=None, context_mask=None, pooled=None) -> (B, C, H, W)`` (the network output;
    the loss defines what it predicts). Zero at initialisation (adaLN-Zero gates and a zero final layer)."""

    def __init__(self, config: MMDiTConfig = MMDiTConfig()) -> None:  # noqa: B008 (frozen dataclass)
        super().__init__()
        self.config = cfg = config
        d, p, g = cfg.d_model, cfg.patch_size, cfg.input_size // cfg.patch_size
        self.x_embed = nn.Linear(p * p * cfg.in_channels, d)  # = a stride-p convolution on the image
        side = cfg.pos_max_size or g
        self.register_buffer("pos_table", pos_embed_2d(side, side, d, g, cfg.interpolation_scale), persistent=False)
        self.t_embed = TimeEmbedding(d, cfg.num_classes)  # sinusoid(1000 t) -> MLP (+ label embedding)
        text = cfg.context_dim is not None
        if text:
            self.c_embed = nn.Linear(cfg.context_dim, d)
            self.null_context = nn.Parameter(torch.zeros(1, 1, cfg.context_dim))
        if cfg.pooled_dim is not None:
            self.pooled_embed = nn.Sequential(nn.Linear(cfg.pooled_dim, d), nn.SiLU(), nn.Linear(d, d))
            self.null_pooled = nn.Parameter(torch.zeros(1, cfg.pooled_dim))
        block = lambda i: JointBlock(d, cfg.heads, cfg.mlp_ratio, cfg.qk_norm, text, last=i == cfg.depth - 1)
        self.blocks = nn.ModuleList(block(i) for i in range(cfg.depth))
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final = nn.Linear(d, p * p * cfg.in_channels)
        for lin in (self.final_ada[1], self.final):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def positions(self, h: int, w: int) -> torch.Tensor:
        """``(h w, d)`` code of an ``h x w`` grid: centred crop of the table, or interpolated if asked and needed."""
        M = math.isqrt(self.pos_table.shape[0])
        if (h > M or w > M) and self.config.pos_interpolate:
            g = self.config.input_size // self.config.patch_size
            return pos_embed_2d(h, w, self.config.d_model, g, self.config.interpolation_scale).to(self.pos_table)
        return crop_pos_embed(self.pos_table, h, w)

    def null_condition(self, cond: dict, drop: dict) -> dict:
        """Rows with ``drop[k]`` get the null ``k``: label ``num_classes``; when ``context`` is dropped, the learned
        null text token (one, the rest masked: the same as calling without context) and the null pooled vector."""
        if set(drop) - {"y", "context", "context_mask", "pooled"}:
            raise ValueError(f"MMDiT can drop 'y' and 'context', not {sorted(set(drop))}")
        n = next(iter(drop.values())).shape[0] if drop else 0
        out = null_labels(cond, drop, self.config.num_classes, n)
        d = drop.get("context", drop.get("pooled"))
        if d is None:
            return out
        if self.config.context_dim is None:
            raise ValueError("cannot drop context: the MMDiT has no text stream (context_dim=None)")
        ctx = cond.get("context")
        if ctx is None:
            out["context"] = self.null_context.expand(n, 1, -1)
            out.pop("context_mask", None)
        else:
            out["context"] = torch.where(d[:, None, None], self.null_context.to(ctx.dtype).expand_as(ctx), ctx)
            # a dropped row keeps one null token: joint attention would weigh L identical copies L times
            keep = cond.get("context_mask")
            keep = torch.ones(ctx.shape[:2], dtype=torch.bool, device=ctx.device) if keep is None else keep.bool()
            first = torch.zeros_like(keep)
            first[:, 0] = True
            out["context_mask"] = torch.where(d[:, None], first, keep)
        if self.config.pooled_dim is not None:
            pooled = cond.get("pooled")
            null = self.null_pooled.expand(n, -1)
            out["pooled"] = null if pooled is None else torch.where(d[:, None], null.to(pooled.dtype), pooled)
        return out

    def forward(self, x, t, y=None, context=None, context_mask=None, pooled=None):
        cfg, p = self.config, self.config.patch_size
        if not torch.is_tensor(x) or x.dim() != 4 or x.shape[1] != cfg.in_channels or x.shape[2] % p or x.shape[3] % p:
            raise ValueError(f"x must be (B, {cfg.in_channels}, H, W) with H, W divisible by {p}, got {x.shape}")
        B, h, w = x.shape[0], x.shape[2] // p, x.shape[3] // p
        t = torch.as_tensor(t, device=x.device, dtype=torch.promote_types(x.dtype, torch.float32))
        t = t.expand(B) if t.dim() == 0 else t
        tokens = self.x_embed(patchify(x, p)) + self.positions(h, w).to(x.dtype)  # (B, N, d)
        c = self.t_embed(t, y)  # (B, d)
        if cfg.pooled_dim is not None:
            pooled = self.null_pooled.expand(B, -1) if pooled is None else pooled
            if pooled.shape != (B, cfg.pooled_dim):
                raise ValueError(f"pooled must have shape ({B}, {cfg.pooled_dim}), got {tuple(pooled.shape)}")
            c = c + self.pooled_embed(pooled.to(c.dtype))
        elif pooled is not None:
            raise ValueError("pooled given but the MMDiT has no pooled_dim")
        ctx, key_mask = None, None
        if cfg.context_dim is not None:
            if context is None:
                context, context_mask = self.null_context.to(x.dtype).expand(B, 1, -1), None
            if context.dim() != 3 or context.shape[0] != B or context.shape[2] != cfg.context_dim:
                raise ValueError(f"context must be ({B}, L, {cfg.context_dim}), got {tuple(context.shape)}")
            ctx = self.c_embed(context)  # (B, L, d)
            if context_mask is not None:
                if context_mask.shape != context.shape[:2]:
                    raise ValueError(f"context_mask must be {tuple(context.shape[:2])}, got {context_mask.shape}")
                image = torch.ones(B, h * w, dtype=torch.bool, device=x.device)
                key_mask = torch.cat([context_mask.bool(), image], dim=1)  # (B, L + N): text first, as in SD3
        elif context is not None:
            raise ValueError("context given but the MMDiT has no text stream (context_dim=None)")
        for blk in self.blocks:
            tokens, ctx = blk(tokens, c, ctx, key_mask)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        out = self.final(modulate(self.final_norm(tokens), shift, scale))  # (B, N, p p C)
        return unpatchify(out, p, h, w)
