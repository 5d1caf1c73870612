"""ControlNet: spatial control of a frozen text-to-image UNet through a trainable copy of its encoder.

Chapter: "ControlNet" (``chapters/controlnet.ipynb``). Training and evaluation: :mod:`lib.latent.controlnet_train`.

A :class:`ControlNet` is built from a (trained, frozen) :class:`~lib.nn.unet.UNet` by copying its encoder and middle
block (:meth:`ControlNet.from_unet`; the decoder is dropped). A small convolutional :class:`ConditionEncoder` maps the
condition image ``c`` (an object mask or edge map at the *image* resolution, 32x32) to the latent resolution (8x8) and
is added after the copy's ``conv_in`` (the UNet's ``input_residual`` hook). Every skip activation of the copy and its
middle output pass through a zero-initialised 1x1 convolution ``Z`` and are added, times the control strength ``s``,
to the frozen UNet's skips and middle (the ``down_residuals`` / ``mid_residual`` hooks of ``UNet.decode``):

    y_c = F(x; Theta) + s * Z(F_copy(x + Z(c; Theta_z1); Theta_c); Theta_z2)          (Zhang et al. 2023, eq. 2)

At initialisation ``Z = 0``, so the controlled model is the frozen one, bit for bit, whatever ``c``. Zero weights do
not block learning: for ``y = W h + b`` with ``W = 0``, ``dL/dh = W^T dL/dy = 0`` (nothing reaches the copy in the
first step) but ``dL/dW = dL/dy h^T != 0``, so the first step moves ``Z`` and the second reaches the copy. The
condition encoder's last layer is a second zero in series: ``E(c) = 0`` until step two moves it, so the output
depends on ``c`` only from the third forward pass, and the layers behind it learn from step three. Several
ControlNets compose by adding their residuals (:class:`ControlledUNet` with a list).

References: Zhang, Rao and Agrawala, "Adding Conditional Control to Text-to-Image Diffusion Models", ICCV 2023
(sections 3.1-3.3: trainable copy, zero convolution, condition encoder (four convolutions in the text; eight, the
last zero-initialised, in the released code), 50% empty prompts, "sudden convergence", multi-ControlNet);
Rombach et al. 2022 (the latent UNet it controls).

Glossary
--------
x, z          ``(B, C, 8, 8)`` noisy latent; ``t`` ``(B,)`` time
c             ``(B, c_cond, 32, 32)`` condition image (mask or edges in {0, 1}); ``condition`` in the code
F, F_copy     the frozen UNet, the trainable copy of its encoder + middle block (``copy``)
Z             zero convolutions: ``zero_convs[k]`` on skip ``k``, ``mid_zero`` on the middle output
s             control strength (``strength``), scales the residuals; 0 gives the frozen model
residuals     ``down`` (one ``(B, C_k, H_k, W_k)`` per skip of the UNet) and ``mid`` ``(B, C_mid, H/2^l, W/2^l)``
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lib.nn.unet import UNet, UNetConfig


@dataclass(frozen=True)
class ControlNetConfig:
    """The condition encoder (the trainable copy's shape is the UNet's)."""

    condition_channels: int = 1
    """Channels of the condition image (1 for a mask or an edge map)."""
    factor: int = 4
    """Condition resolution / latent resolution (the autoencoder's downsampling f: 32x32 -> 8x8)."""
    hidden: tuple[int, ...] = (16, 32, 64)
    """Condition-encoder channels: one stage per entry, a stride-2 convolution between stages (len = log2 f + 1)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(self.hidden))
        if not isinstance(self.condition_channels, int) or self.condition_channels < 1:
            raise ValueError(f"condition_channels must be a positive int, got {self.condition_channels!r}")
        if not isinstance(self.factor, int) or self.factor < 1 or self.factor & (self.factor - 1):
            raise ValueError(f"factor must be a power of two >= 1, got {self.factor!r}")
        if len(self.hidden) != self.factor.bit_length() or min(self.hidden) < 1:
            raise ValueError(f"hidden needs log2(factor) + 1 = {self.factor.bit_length()} positive entries, got "
                             f"{self.hidden!r}")  # fmt: skip


def zero_conv(c_in: int, c_out: int, kernel: int = 1) -> nn.Conv2d:
    """A convolution with weight and bias initialised to zero (output exactly 0 at initialisation)."""
    conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ConditionEncoder(nn.Module):
    """``c (B, c_cond, f H, f W) -> (B, base_channels, H, W)``: conv-SiLU stages, a stride-2 conv between stages,
    then a zero-initialised 3x3 conv (``diffusers``' ``ControlNetConditioningEmbedding`` at a smaller size)."""

    def __init__(self, config: ControlNetConfig, out_channels: int) -> None:
        super().__init__()
        h = config.hidden
        layers: list[nn.Module] = [nn.Conv2d(config.condition_channels, h[0], 3, padding=1), nn.SiLU()]
        for a, b in zip(h[:-1], h[1:], strict=True):
            layers += [nn.Conv2d(a, a, 3, padding=1), nn.SiLU(), nn.Conv2d(a, b, 3, stride=2, padding=1), nn.SiLU()]
        self.net = nn.Sequential(*layers)
        self.out = zero_conv(h[-1], out_channels, 3)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.out(self.net(c))


@dataclass
class ControlResiduals:
    """What a :class:`ControlNet` adds to the frozen decoder."""

    down: list[torch.Tensor]
    """One residual per skip of the UNet (``UNet.decode``'s ``down_residuals``)."""
    mid: torch.Tensor
    """The middle block's residual (``mid_residual``)."""

    def __add__(self, other: ControlResiduals) -> ControlResiduals:
        return ControlResiduals([a + b for a, b in zip(self.down, other.down, strict=True)], self.mid + other.mid)


class ControlNet(nn.Module):
    """Trainable copy of a UNet's encoder + middle block, a condition encoder, zero convolutions.

    ``controlnet(x, t, condition, context=..., context_mask=..., strength=1.0) -> ControlResiduals``.
    Build it with :meth:`from_unet` (copies the trained encoder) or ``ControlNet(unet_config, config)`` (fresh
    weights, e.g. before ``load_state_dict``).
    """

    def __init__(self, unet_config: UNetConfig, config: ControlNetConfig = ControlNetConfig()) -> None:  # noqa: B008
        super().__init__()
        if not isinstance(unet_config, UNetConfig):
            raise TypeError(f"unet_config must be a UNetConfig, got {type(unet_config).__name__}")
        self.unet_config, self.config = unet_config, config
        copy_ = UNet(unet_config)
        del copy_.up, copy_.out  # only encode() (embed, conv_in, down, mid) is used: the decoder stays frozen
        self.copy = copy_
        chans = [copy_.conv_in.out_channels]  # channels of each skip in hs, as UNet.encode appends them
        for blk in copy_.down:
            chans.append(blk[0].out_channels if len(blk) == 1 else blk[0].out_layers[-1].out_channels)
        self.condition_encoder = ConditionEncoder(config, chans[0])
        self.zero_convs = nn.ModuleList(zero_conv(c, c) for c in chans)
        self.mid_zero = zero_conv(chans[-1], chans[-1])

    @classmethod
    def from_unet(cls, unet: UNet, config: ControlNetConfig = ControlNetConfig()) -> ControlNet:  # noqa: B008
        """A ControlNet whose trainable copy starts from ``unet``'s encoder and middle block (copied weights)."""
        if not isinstance(unet, UNet):
            raise TypeError(f"unet must be a lib.nn.unet.UNet, got {type(unet).__name__}")
        net = cls(unet.config, config)
        encoder = {k: v for k, v in unet.state_dict().items() if not k.startswith(("up.", "out."))}
        net.copy.load_state_dict(copy.deepcopy(encoder))
        return net

    def check_condition(self, condition: torch.Tensor, x: torch.Tensor) -> None:
        """``condition`` must be ``(B, condition_channels, factor H, factor W)`` for ``x (B, C, H, W)``."""
        cfg = self.config
        want = (x.shape[0], cfg.condition_channels, cfg.factor * x.shape[2], cfg.factor * x.shape[3])
        if not torch.is_tensor(condition) or not condition.is_floating_point() or tuple(condition.shape) != want:
            got = tuple(condition.shape) if torch.is_tensor(condition) else type(condition).__name__
            raise ValueError(f"condition must be a float tensor of shape {want} (the image resolution: {cfg.factor}x "
                             f"the latent's), got {got}")  # fmt: skip

    def forward(self, x, t, condition, y=None, context=None, context_mask=None, strength: float = 1.0):
        """Residuals ``s * Z(F_copy(x + E(c)))`` for the frozen decoder (see the module docstring)."""
        self.check_condition(condition, x)
        e = self.condition_encoder(condition.to(x.dtype))  # (B, base_channels, H, W)
        h, hs, _ = self.copy.encode(x, t, y, context, context_mask, input_residual=e)
        down = [z(hk) for z, hk in zip(self.zero_convs, hs, strict=True)]
        mid = self.mid_zero(h)
        if strength != 1.0:
            down, mid = [strength * d for d in down], strength * mid
        return ControlResiduals(down, mid)


class ControlledUNet(nn.Module):
    """The frozen UNet plus one or more ControlNets whose residuals add up:
    ``model(x, t, condition=c, context=..., context_mask=..., strength=1.0) -> (B, C, H, W)``.

    ``condition`` stacks the ControlNets' condition images along channels, in order (one tensor, so that guidance
    doubles it like any other condition); ``strength`` is one float or one per ControlNet. The UNet is frozen here
    (``requires_grad_(False)``, eval mode); :meth:`null_condition` keeps the condition (``diffusers``' default: the
    control also acts on the unconditional half of classifier-free guidance).
    """

    def __init__(self, unet: UNet, controlnets: ControlNet | Sequence[ControlNet]) -> None:
        super().__init__()
        if not isinstance(unet, UNet):
            raise TypeError(f"unet must be a lib.nn.unet.UNet, got {type(unet).__name__}")
        nets = [controlnets] if isinstance(controlnets, ControlNet) else list(controlnets)
        if not nets or not all(isinstance(n, ControlNet) for n in nets):
            raise TypeError("controlnets must be a ControlNet or a non-empty sequence of ControlNets")
        if any(n.unet_config != unet.config for n in nets):
            raise ValueError("every ControlNet must be built for this UNet's config (ControlNet.from_unet(unet))")
        self.unet = unet.requires_grad_(False).eval()
        self.controlnets = nn.ModuleList(nets)

    def train(self, mode: bool = True) -> ControlledUNet:
        super().train(mode)
        self.unet.eval()  # frozen: no dropout, whatever the mode
        return self

    def null_condition(self, cond: dict, drop: dict) -> dict:
        """The UNet's null context where ``drop`` says; ``condition`` and ``strength`` unchanged."""
        return self.unet.null_condition(cond, {k: v for k, v in drop.items() if k in ("y", "context", "context_mask")})

    def residuals(self, x, t, condition, y=None, context=None, context_mask=None, strength=1.0) -> ControlResiduals:
        """The summed residuals of every ControlNet (each on its channels of ``condition``)."""
        strengths = [strength] * len(self.controlnets) if isinstance(strength, (int, float)) else list(strength)
        if len(strengths) != len(self.controlnets):
            raise ValueError(f"strength must be a float or {len(self.controlnets)} floats, got {strength!r}")
        sizes = [n.config.condition_channels for n in self.controlnets]
        if not torch.is_tensor(condition) or condition.dim() != 4 or condition.shape[1] != sum(sizes):
            got = tuple(condition.shape) if torch.is_tensor(condition) else type(condition).__name__
            raise ValueError(f"condition must be (B, {sum(sizes)}, H, W): the ControlNets' {sizes} channels stacked, "
                             f"got {got}")  # fmt: skip
        if self.unet.config.context_dim is not None and context is None:  # the frozen model's null context
            context, context_mask = self.unet.null_context.to(x.dtype).expand(x.shape[0], 1, -1), None
        total = None
        for net, c, s in zip(self.controlnets, condition.split(sizes, dim=1), strengths, strict=True):
            r = net(x, t, c, y, context, context_mask, strength=s)
            total = r if total is None else total + r
        return total

    def forward(self, x, t, condition, y=None, context=None, context_mask=None, strength=1.0) -> torch.Tensor:
        r = self.residuals(x, t, condition, y, context, context_mask, strength)
        h, hs, emb = self.unet.encode(x, t, y, context, context_mask)
        return self.unet.decode(h, hs, emb, context, context_mask, down_residuals=r.down, mid_residual=r.mid)


def condition_image(batch, kind: str = "mask") -> torch.Tensor:
    """The condition of a :class:`~lib.data.shapes.ShapesBatch`: ``"mask"`` (union of the object masks) or
    ``"edges"`` (the edge map), ``(N, 1, 32, 32)`` float32 in {0, 1}; ``"mask+edges"`` stacks both ``(N, 2, 32, 32)``
    (for two composed ControlNets)."""
    kinds = ("mask", "edges", "mask+edges")
    if kind not in kinds:
        raise ValueError(f"kind must be one of {kinds}, got {kind!r}")
    mask = batch.masks.any(1, keepdim=True).float()
    return {"mask": mask, "edges": batch.edges.float(), "mask+edges": torch.cat([mask, batch.edges.float()], 1)}[kind]
