"""Text-to-image latent diffusion, end to end: context from a caption (or labels), a latent UNet with
cross-attention, classifier-free guidance, DDIM on Stable Diffusion's grid, the autoencoder's decoder; img2img
(SDEdit) and negative captions; the cost of one UNet step in latent vs pixel space.

Chapter: "Latent diffusion" (``chapters/latent_diffusion.ipynb``). Training: :mod:`lib.latent.train`; evaluation:
:mod:`lib.latent.study`.

Sampling (eps prediction, ``x_t = alpha z_0 + sigma eps`` on :class:`~lib.diffusion.schedules.DiscreteSchedule`):
``z_T ~ N(0, I)`` of shape ``(C, 8, 8)``; at each grid time the guided ``eps_hat = (1 + w) eps(z, t, c) - w eps(z, t,
null)`` (Ho and Salimans' ``w``; ``diffusers``' ``guidance_scale = 1 + w``), a DDIM step; then ``x = D(z_0)``.
A negative caption ``n`` replaces the null half: ``eps_hat = eps(n) + (1 + w) (eps(c) - eps(n))``. SDEdit
(Meng et al. 2022) noises ``E(x)`` to a time ``t_0`` and runs the grid from there under a new caption.

References: Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models", CVPR 2022; Ho and
Salimans, "Classifier-Free Diffusion Guidance", 2022; Song, Meng and Ermon, "DDIM", ICLR 2021; Meng et al.,
"SDEdit", ICLR 2022.

Glossary
--------
z          ``(B, C, 8, 8)`` scaled latent (``scale_factor * z``, unit variance); ``x`` ``(B, 3, 32, 32)`` in [-1, 1]
w          guidance weight (0: the conditional model alone, one network pass per step)
strength   SDEdit's ``t_0`` in (0, 1]: how much of the grid is re-run (1: from pure noise)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from lib.diffusion.discrete import SDSchedulerConfig, sd_ddim, sd_time_grid
from lib.diffusion.guidance import guided_denoiser
from lib.diffusion.predictions import Denoiser
from lib.latent.conditioning import (
    CONDITIONINGS,
    GROUPED,
    ClipConditioner,
    GroupedConditioner,
    check_labels,
    pad_context,
)
from lib.nn.unet import UNet, UNetConfig


@dataclass(frozen=True)
class LDMConfig:
    """The latent UNet and its conditioning."""

    conditioning: str = "grouped"
    """One of :data:`~lib.latent.conditioning.CONDITIONINGS`."""
    latent_channels: int = 4
    """C of the autoencoder's latent ``(C, 8, 8)``."""
    base_channels: int = 32
    """UNet width at 8x8."""
    channel_mults: tuple[int, ...] = (1, 2)
    """Per level: 8x8, 4x4."""
    attention_levels: tuple[int, ...] = (0, 1)
    """Self- and cross-attention at 8x8 and 4x4 (and always in the middle)."""
    heads: int = 4
    """Attention heads."""
    time_dim: int = 128
    """Time-embedding width."""
    context_dim: int = 64
    """Width ``d`` of the context tokens (the text tower's width for ``clip``)."""
    max_objects: int = 3
    """K of the labels."""

    def __post_init__(self) -> None:
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}")
        object.__setattr__(self, "channel_mults", tuple(self.channel_mults))
        object.__setattr__(self, "attention_levels", tuple(self.attention_levels))

    def unet_config(self, in_channels: int | None = None) -> UNetConfig:
        """The UNet's config (``in_channels`` overrides the latent channels, e.g. 3 for the pixel-space twin)."""
        return UNetConfig(in_channels=in_channels or self.latent_channels, base_channels=self.base_channels,
                          channel_mults=self.channel_mults, attention_levels=self.attention_levels, heads=self.heads,
                          time_dim=self.time_dim, context_dim=self.context_dim)  # fmt: skip


class LatentDenoiser(nn.Module):
    """The trained part: the UNet, plus the grouped conditioner's embeddings for the ``grouped*`` conditionings."""

    def __init__(self, config: LDMConfig = LDMConfig()) -> None:  # noqa: B008
        super().__init__()
        self.config = config
        self.unet = UNet(config.unet_config())
        self.grouped = None
        if config.conditioning in GROUPED:
            fold = config.conditioning == "grouped_full"
            self.grouped = GroupedConditioner(config.context_dim, config.max_objects, fold_relations=fold)

    def forward(self, z: torch.Tensor, t: torch.Tensor, context=None, context_mask=None) -> torch.Tensor:
        """``eps_hat (B, C, 8, 8)``."""
        return self.unet(z, t, context=context, context_mask=context_mask)


@dataclass
class Generation:
    """What :meth:`TextToImage.generate` and :meth:`TextToImage.img2img` return."""

    images: torch.Tensor
    """``(B, 3, 32, 32)`` in [-1, 1]."""
    latents: torch.Tensor
    """``(B, C, 8, 8)`` final scaled latents."""
    nfe: int
    """UNet evaluations per sample batch (a guided step is one evaluation of the doubled batch)."""


class _WithNegative:
    """The UNet with its null condition replaced by a negative caption's context (for :func:`guided_denoiser`)."""

    def __init__(self, unet: UNet, ctx: torch.Tensor, mask: torch.Tensor) -> None:
        self.unet, self.ctx, self.mask = unet, ctx, mask

    def __call__(self, x, t, **cond):
        return self.unet(x, t, **cond)

    def null_condition(self, cond: dict, drop: dict) -> dict:
        return {"context": self.ctx, "context_mask": self.mask}


class TextToImage:
    """Autoencoder + conditioner + latent UNet + SD's scheduler.

    Args:
        denoiser: a trained :class:`LatentDenoiser`.
        autoencoder: ``lib.latent.autoencoder.KLAutoencoder`` (``encode`` / ``decode`` on scaled latents).
        clip: a ``lib.latent.clip.TrainedCLIP`` (its frozen text tower) for the ``clip*`` conditionings.
        scheduler: SD's scheduler conventions.
    """

    def __init__(self, denoiser: LatentDenoiser, autoencoder: nn.Module, clip=None,
                 scheduler: SDSchedulerConfig = SDSchedulerConfig()) -> None:  # noqa: B008  # fmt: skip
        if not isinstance(denoiser, LatentDenoiser):
            raise TypeError(f"denoiser must be a LatentDenoiser, got {type(denoiser).__name__}")
        if not (callable(getattr(autoencoder, "encode", None)) and callable(getattr(autoencoder, "decode", None))):
            raise TypeError("autoencoder must have encode(x) and decode(z) (lib.latent.autoencoder.KLAutoencoder)")
        self.config = denoiser.config
        if self.config.conditioning not in GROUPED:
            if clip is None:
                raise ValueError(f"conditioning {self.config.conditioning!r} needs clip (a TrainedCLIP)")
            self.text = ClipConditioner(clip)
            if self.text.d != self.config.context_dim:
                raise ValueError(f"clip width {self.text.d} != context_dim {self.config.context_dim}")
        self.denoiser, self.autoencoder, self.scheduler = denoiser.eval(), autoencoder.eval(), scheduler
        self.schedule = scheduler.schedule()
        self.metadata: dict | None = None  # a loaded checkpoint's sidecar

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.config.latent_channels, 8, 8)

    @torch.no_grad()
    def context(self, captions: list[str] | None = None, labels: torch.Tensor | None = None):
        """``(context (B, L, d), mask (B, L))``: from ``labels`` for ``grouped*``, from ``captions`` otherwise."""
        if self.config.conditioning in GROUPED:
            if labels is None:
                raise ValueError(f"the {self.config.conditioning!r} conditioning reads labels (B, K, 5): pass labels=")
            return self.denoiser.grouped(check_labels(labels))
        if captions is None:
            raise ValueError(f"the {self.config.conditioning!r} conditioning reads captions: pass captions=")
        return self.text(captions)

    def _denoiser(self, ctx, mask, w: float, negative) -> Denoiser:
        unet = self.denoiser.unet
        if negative is not None:
            nctx, nmask = negative
            if nctx.shape[0] != ctx.shape[0]:
                raise ValueError(f"need one negative per prompt: {nctx.shape[0]} negatives for {ctx.shape[0]} prompts")
            L = max(ctx.shape[1], nctx.shape[1])
            (ctx, mask), (nctx, nmask) = pad_context(ctx, mask, L), pad_context(nctx, nmask, L)
            return guided_denoiser(_WithNegative(unet, nctx, nmask), "eps", w=w, context=ctx, context_mask=mask)
        if w == 0:
            return Denoiser(unet, "eps", context=ctx, context_mask=mask)  # (1 + 0) eps_c - 0 eps_null, one pass
        return guided_denoiser(unet, "eps", w=w, context=ctx, context_mask=mask)

    @torch.no_grad()
    def generate(
        self, captions: list[str] | None = None, labels: torch.Tensor | None = None, *, w: float = 2.0,
        steps: int = 20, generator: torch.Generator | None = None, negative_captions: list[str] | None = None,
        negative_labels: torch.Tensor | None = None, eta: float = 0.0,
    ) -> Generation:  # fmt: skip
        """Sample one image per caption (or label row) with guidance weight ``w`` and ``steps`` DDIM steps; the
        starting noise (and DDIM's, for ``eta > 0``) comes from ``generator``."""
        if not isinstance(w, (int, float)) or w < 0:
            raise ValueError(f"w must be a number >= 0, got {w!r}")
        ctx, mask = self.context(captions, labels)
        neg = None
        if negative_captions is not None or negative_labels is not None:
            neg = self.context(negative_captions, negative_labels)
        z_T = torch.randn((ctx.shape[0], *self.latent_shape), generator=generator)
        out = sd_ddim(
            self._denoiser(ctx, mask, float(w), neg), z_T, steps, self.scheduler, eta=eta, generator=generator
        )
        return Generation(self.decode(out.x), out.x, out.nfe)

    @torch.no_grad()
    def img2img(
        self, images: torch.Tensor, captions: list[str] | None = None, labels: torch.Tensor | None = None, *,
        strength: float = 0.6, w: float = 2.0, steps: int = 20, generator: torch.Generator | None = None,
    ) -> Generation:  # fmt: skip
        """SDEdit: encode ``images (B, 3, 32, 32)``, noise the latent to the first grid time ``t_0 <= strength``,
        denoise under the new caption (or labels) on the rest of the grid."""
        if not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {strength!r}")
        ctx, mask = self.context(captions, labels)
        if images.dim() != 4 or images.shape[0] != ctx.shape[0]:
            raise ValueError(
                f"images must be (B, 3, 32, 32) with B = {ctx.shape[0]} prompts, got {tuple(images.shape)}"
            )
        ts = sd_time_grid(steps, self.scheduler)
        kept = ts[ts <= strength + 1e-12]
        if len(kept) < 2:
            raise ValueError(f"strength={strength} keeps no step of the {steps}-step grid")
        z0 = self.autoencoder.encode(images)
        z_t, _ = self.schedule.perturb(z0, kept[0].to(z0.dtype), generator)
        den = self._denoiser(ctx, mask, float(w), None)
        out = sd_ddim(den, z_t, steps, self.scheduler, generator=generator, t_start=float(kept[0]))
        return Generation(self.decode(out.x), out.x, out.nfe)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, chunk: int = 500) -> torch.Tensor:
        """Images ``(B, 3, 32, 32)`` in [-1, 1] of scaled latents."""
        return torch.cat([self.autoencoder.decode(z[i : i + chunk]).clamp(-1, 1) for i in range(0, len(z), chunk)])


def step_cost(config: LDMConfig = LDMConfig(), batch: int = 16, repeat: int = 7, context_len: int = 20) -> dict:  # noqa: B008
    """Median wall time of one UNet forward on ``(C, 8, 8)`` latents and on ``(3, 32, 32)`` pixels with the same
    UNet config (the pixel twin differs only in ``in_channels``), timed interleaved (``lib.utils.compare``)."""
    from lib.utils import compare

    g = torch.Generator().manual_seed(0)
    ctx = torch.randn(batch, context_len, config.context_dim, generator=g)
    mask = torch.ones(batch, context_len, dtype=torch.bool)
    t = torch.rand(batch, generator=g)
    nets, xs = {}, {}
    for name, c, side in (("latent", config.latent_channels, 8), ("pixel", 3, 32)):
        nets[name] = UNet(config.unet_config(in_channels=c)).eval()
        xs[name] = torch.randn(batch, c, side, side, generator=g)

    def forward(name: str):
        def f() -> torch.Tensor:
            with torch.no_grad():
                return nets[name](xs[name], t, context=ctx, context_mask=mask)

        return f

    times = compare({k: forward(k) for k in nets}, warmup=2, repeat=repeat)
    return {"latent_ms": times["latent"].median * 1e3, "pixel_ms": times["pixel"].median * 1e3,
            "ratio": times["pixel"].median / times["latent"].median, "batch": batch, "repeat": repeat,
            "latent_shape": [config.latent_channels, 8, 8], "pixel_shape": [3, 32, 32],
            "unet_config": dataclasses.asdict(config.unet_config())}  # fmt: skip


@torch.no_grad()
def cross_attention_maps(
    pipe: TextToImage, z: torch.Tensor, t: float, captions: list[str] | None = None, labels: torch.Tensor | None = None
) -> dict[int, torch.Tensor]:
    """Cross-attention probabilities ``softmax(Q K^T / sqrt(d_head))`` of one UNet pass at time ``t`` on latents
    ``z (B, C, 8, 8)``: ``{side: (B, L, side, side)}``, averaged over heads and over the blocks at that resolution
    (``Q`` from the image features, ``K`` from the context tokens; each position's row sums to 1 over ``L``)."""
    from lib.nn.attention import attention_scores
    from lib.nn.unet import AttentionBlock

    ctx, mask = pipe.context(captions, labels)
    if z.dim() != 4 or z.shape[0] != ctx.shape[0]:
        raise ValueError(f"z must be (B, C, 8, 8) with B = {ctx.shape[0]} prompts, got {tuple(z.shape)}")
    seen, hooks = [], []
    for blk in pipe.denoiser.unet.modules():
        if isinstance(blk, AttentionBlock) and hasattr(blk, "kv"):
            hooks.append(blk.q.register_forward_hook(lambda m, i, o, b=blk: seen.append((b, o))))
            hooks.append(blk.kv.register_forward_hook(lambda m, i, o, b=blk: seen.append((b, o))))
    try:
        pipe.denoiser(z, torch.full((z.shape[0],), float(t)), context=ctx, context_mask=mask)
    finally:
        for h in hooks:
            h.remove()
    maps: dict[int, list[torch.Tensor]] = {}
    for (blk, q), (_, kv) in zip(seen[::2], seen[1::2], strict=True):
        k = blk._split(kv.chunk(2, dim=-1)[0])  # (B, heads, L, c / heads)
        p = attention_scores(blk._split(q), k, attn_mask=mask[:, None, None, :]).mean(1)  # (B, HW, L)
        side = int(round(p.shape[1] ** 0.5))
        maps.setdefault(side, []).append(p.transpose(1, 2).reshape(p.shape[0], -1, side, side))
    return {side: torch.stack(m).mean(0) for side, m in maps.items()}
