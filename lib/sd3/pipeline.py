"""SD3 at toy scale, end to end: an MMDiT trained with rectified flow on the shapes latents, conditioned on the
frozen CLIP-style text tower (its tokens as the text stream, its pooled ``<eos>`` state added to the adaLN vector),
sampled by Euler on SD3's flow-matching grid with classifier-free guidance, decoded by the frozen autoencoder (by
default the shipped one with its fine-tuned decoder, :func:`lib.latent.train.shipped_autoencoder`: the encoder, hence
the latent space the MMDiT is trained in, is the autoencoder's own).

Chapter: "Stable Diffusion 3" (``chapters/sd3.ipynb``). The latent UNet of the latent-diffusion chapter
(:mod:`lib.latent.pipeline`) sees the same latents, captions and text tower; here the network is
:class:`lib.nn.mmdit.MMDiT`, the loss is the core's :class:`~lib.diffusion.loss.DiffusionLoss` on
:class:`~lib.diffusion.schedules.RectifiedFlow` (velocity ``eps - z_0``, logit-normal ``t``: the formulation
``rf/lognorm(0, 1)`` of :func:`lib.diffusion.rectified.formulation`), the sampler is
:func:`lib.diffusion.samplers.euler` on :func:`lib.diffusion.rectified.flow_match_grid`.

    python -m lib.sd3.pipeline train      # -> weights/shapes_mmdit.safetensors (+ .json)
    python -m lib.sd3.pipeline evaluate   # -> results/sd3/mmdit.json (judge at 5, 10, 25 Euler steps, 3 seeds)
    python -m lib.sd3.pipeline evaluate --unet clip_4500 --no-mmdit --out results/sd3/unet_clip_4500.json
                                          # a latent UNet alone (weights/shapes_ldm_clip_4500), same protocol

References: Esser et al., "Scaling Rectified Flow Transformers for High-Resolution Image Synthesis", 2024;
Peebles and Xie 2023 (DiT); Ho and Salimans 2022 (classifier-free guidance).

Glossary
--------
z        ``(B, C, 8, 8)`` scaled autoencoder latent (unit variance; ``C = 4`` for the shipped autoencoder, 8 or 16
         in :mod:`lib.sd3.channels`); ``x`` ``(B, 3, 32, 32)`` in [-1, 1]
context  ``(B, L, 64)`` frozen text-tower tokens, ``mask`` ``(B, L)`` True at real tokens
pooled   ``(B, 64)`` the token state at ``<eos>`` (:meth:`lib.latent.clip.TextEncoder.pooled`)
w        guidance weight (Ho and Salimans): ``v_hat = (1 + w) v(c) - w v(null)``; diffusers' scale is ``1 + w``
shift    SD3's grid shift ``alpha = sqrt(m / n)``; 1 here (sampled at the training resolution)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lib.checkpoint import WEIGHTS_DIR, load_checkpoint, save_checkpoint
from lib.diffusion.guidance import check_scale, guided_denoiser
from lib.diffusion.predictions import Denoiser
from lib.diffusion.rectified import flow_match_grid, formulation
from lib.diffusion.samplers import euler
from lib.nn.mmdit import MMDiT, MMDiTConfig

CHECKPOINT = WEIGHTS_DIR / "shapes_mmdit.safetensors"
RESULTS = Path(__file__).resolve().parents[2] / "results" / "sd3"


@dataclass(frozen=True)
class SD3TrainConfig:
    """The MMDiT and its training (rectified flow, logit-normal ``t``, context dropout for guidance)."""

    steps: int = 2000
    """Optimisation steps."""
    batch_size: int = 64
    """Latents per step."""
    lr: float = 1e-3
    """AdamW peak learning rate (one-cycle: 5% warm-up, cosine decay)."""
    p_uncond: float = 0.1
    """Probability of the null caption (classifier-free guidance)."""
    n_train: int = 20000
    """Training images (``make_shapes(..., split="train")``, one to three objects)."""
    d_model: int = 96
    """MMDiT width."""
    depth: int = 4
    """Joint blocks."""
    heads: int = 4
    """Attention heads."""
    patch_size: int = 2
    """Patch side on the 8x8 latent (16 image tokens)."""
    qk_norm: bool = True
    """RMSNorm on queries and keys (SD3's choice)."""
    m: float = 0.0
    """Logit-normal location."""
    s: float = 1.0
    """Logit-normal scale."""
    seed: int = 0
    """Seed of initialisation, data, captions, times, noise and dropout."""

    def __post_init__(self) -> None:
        if self.steps < 4 or min(self.batch_size, self.n_train, self.d_model, self.depth, self.heads) < 1:
            raise ValueError(f"steps >= 4, batch_size, n_train, d_model, depth and heads >= 1 needed, got {self}")
        if not 0 <= self.p_uncond < 1:
            raise ValueError(f"p_uncond must be in [0, 1), got {self.p_uncond!r}")

    def model(self, context_dim: int = 64, latent_channels: int = 4) -> MMDiTConfig:
        return MMDiTConfig(in_channels=latent_channels, input_size=8, patch_size=self.patch_size,
                           d_model=self.d_model, depth=self.depth, heads=self.heads, context_dim=context_dim,
                           pooled_dim=context_dim, qk_norm=self.qk_norm)  # fmt: skip


def text_condition(clip, captions: list[str]) -> dict[str, torch.Tensor]:
    """``{"context": (B, L, d), "context_mask": (B, L), "pooled": (B, d)}`` from the frozen text tower."""
    if isinstance(captions, str) or not isinstance(captions, (list, tuple)) or not captions:
        raise ValueError("captions must be a non-empty list of strings")
    with torch.no_grad():
        ctx, mask = clip.context(list(captions))
    last = mask.long().sum(1) - 1  # <eos>: the last real token
    return {"context": ctx, "context_mask": mask, "pooled": ctx[torch.arange(len(ctx)), last]}


@dataclass
class Generation:
    """Samples: ``images (B, 3, 32, 32)`` in [-1, 1], ``latents (B, C, 8, 8)``, network evaluations ``nfe``."""

    images: torch.Tensor
    latents: torch.Tensor
    nfe: int


class SD3Pipeline:
    """Frozen autoencoder + frozen text tower + MMDiT; ``generate`` mirrors :class:`lib.latent.pipeline.TextToImage`
    (so :func:`lib.latent.study.run` evaluates either)."""

    def __init__(self, model: MMDiT, autoencoder, clip, shift: float = 1.0) -> None:
        if not isinstance(model, MMDiT) or model.config.context_dim is None:
            raise TypeError(f"model must be an MMDiT with a text stream, got {type(model).__name__}")
        if not callable(getattr(clip, "context", None)):
            raise TypeError(f"clip must be a lib.latent.clip.TrainedCLIP, got {type(clip).__name__}")
        C = getattr(getattr(autoencoder, "config", None), "latent_channels", None)
        if C != model.config.in_channels:
            raise ValueError(f"the MMDiT denoises {model.config.in_channels} latent channels, the autoencoder has {C}")
        self.model, self.autoencoder, self.clip = model.eval(), autoencoder.eval(), clip
        self.shift = check_scale("shift", shift)
        self.schedule = formulation("rf/lognorm").schedule
        self.config = argparse.Namespace(conditioning="clip")  # what lib.latent.study reads
        self.metadata: dict | None = None

    @torch.no_grad()
    def generate(self, captions: list[str], labels=None, *, w: float = 2.0, steps: int = 25,
                 generator: torch.Generator | None = None) -> Generation:  # fmt: skip
        """One sample per caption: ``z_1 ~ N(0, I)``, ``steps`` Euler steps of the guided velocity on SD3's grid
        (``flow_match_grid(steps, shift)``, 1 -> 0), ``x = D(z_0)``. ``labels`` is ignored (captions are read)."""
        w = check_scale("w", w)
        if w < 0:
            raise ValueError(f"w must be >= 0, got {w!r}")
        cond = text_condition(self.clip, captions)
        z_1 = torch.randn((len(captions), self.model.config.in_channels, 8, 8), generator=generator)
        if w == 0:
            den = Denoiser(self.model, "velocity", **cond)
        else:
            den = guided_denoiser(self.model, "velocity", w=w, **cond)
        out = euler(den, self.schedule, z_1, ts=flow_match_grid(steps, shift=self.shift))
        x = torch.cat([self.autoencoder.decode(out.x[i : i + 500]) for i in range(0, len(out.x), 500)])
        return Generation(x.clamp(-1, 1), out.x, out.nfe)


def _frozen_parts(autoencoder=None, clip=None):
    """The latent chapter's frozen parts with the plain text tower (:func:`lib.latent.train.frozen_parts`)."""
    from lib.latent.train import frozen_parts

    return frozen_parts("clip", autoencoder, clip)


def train_mmdit(config: SD3TrainConfig = SD3TrainConfig(), autoencoder=None, clip=None):  # noqa: B008
    """Train through ``lib.train.train``; returns ``(model (eval mode), History, {sha256 of the frozen parts})``."""
    from lib.data.shapes import caption, make_shapes
    from lib.train import one_cycle, train
    from lib.utils import seed_everything

    ae, clip, shas = _frozen_parts(autoencoder, clip)
    seed_everything(config.seed, threads=None, deterministic=False)
    model = MMDiT(config.model(clip.config.d_model, ae.config.latent_channels))
    data = make_shapes(config.n_train, seed=config.seed, split="train")
    with torch.no_grad():
        z = torch.cat([ae.encode(data.images[i : i + 500]) for i in range(0, len(data), 500)])  # (n, C, 8, 8)
    g = torch.Generator().manual_seed(config.seed + 1)
    rng = np.random.default_rng([config.seed, 3])
    loss = formulation("rf/lognorm", config.m, config.s).loss(generator=g, p_uncond={"context": config.p_uncond})

    def batch(step: int) -> dict:
        idx = torch.randint(0, len(z), (config.batch_size,), generator=g)
        caps = [caption(data.labels[i], rng) for i in idx.tolist()]
        return {"x": z[idx], **text_condition(clip, caps)}

    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    sched = one_cycle(opt, config.lr, config.steps)
    hist = train(model, loss, batch, config.steps, optimizer=opt, scheduler=sched, grad_clip=1.0,
                 log_every=max(1, config.steps // 100), desc="MMDiT (rectified flow)")  # fmt: skip
    return model.eval(), hist, shas


def save_mmdit(model: MMDiT, hist, shas: dict, config: SD3TrainConfig, path: str | Path, command: str) -> Path:
    """Checkpoint with the training config, the MMDiT config, the loss curve and the frozen parts' sha256."""
    extra = {"model": dataclasses.asdict(model.config), **shas, "final_loss_mean_last_10": hist.last("loss", 10),
             "train_seconds": hist.seconds, "loss_curve": hist.metrics["loss"]}  # fmt: skip
    return save_checkpoint(path, model.state_dict(), command=command, seed=config.seed,
                           config=dataclasses.asdict(config), extra=extra)  # fmt: skip


def load_pipeline(path: str | Path = CHECKPOINT, autoencoder=None, clip=None, shift: float = 1.0) -> SD3Pipeline:
    """The shipped MMDiT with the shipped autoencoder and text tower (their sha256 must match the training ones)."""
    state, meta = load_checkpoint(path)
    ae, clip, shas = _frozen_parts(autoencoder, clip)
    for key, got in shas.items():
        if got is not None and meta.get(key) is not None and got != meta[key]:
            raise ValueError(f"{Path(path).name} was trained on another {key[:-7]} ({meta[key][:12]}...): retrain it")
    model = MMDiT(MMDiTConfig(**meta["model"]))
    model.load_state_dict(state)
    pipe = SD3Pipeline(model, ae, clip, shift)
    pipe.metadata = meta
    return pipe


def main(argv: list[str] | None = None) -> int:
    from lib.utils import save_results, seed_everything

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("train", "evaluate"))
    for f in dataclasses.fields(SD3TrainConfig):
        kind = (lambda v: v.lower() in ("1", "true")) if f.type in (bool, "bool") else type(f.default)
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)
    parser.add_argument("--ws", type=float, nargs="+", default=[2.0])
    parser.add_argument("--eval-steps", type=int, nargs="+", default=[5, 10, 25])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=200, help="captions per set (one- and two-object)")
    parser.add_argument("--unet", nargs="*", default=None, metavar="NAME",
                        help="also latent UNets weights/shapes_ldm_<NAME> (clip conditioning; no NAME: clip) at the "
                        "same w, DDIM steps")  # fmt: skip
    parser.add_argument("--no-mmdit", action="store_true", help="evaluate only the UNets given by --unet")
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT, help="the MMDiT to evaluate")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = vars(parser.parse_args(argv))
    what, out, threads, ckpt = args.pop("what"), args.pop("out"), args.pop("threads"), args.pop("checkpoint")
    unets, no_mmdit = args.pop("unet"), args.pop("no_mmdit")
    if no_mmdit and not unets:
        parser.error("--no-mmdit needs at least one --unet NAME")
    command = "python -m lib.sd3.pipeline " + " ".join(sys.argv[1:] if argv is None else argv)
    seed_everything(0, threads=threads)
    if what == "train":
        config = SD3TrainConfig(**{f.name: args[f.name] for f in dataclasses.fields(SD3TrainConfig)})
        model, hist, shas = train_mmdit(config)
        path = save_mmdit(model, hist, shas, config, out or CHECKPOINT, command)
        print(f"saved {path} (loss {hist.last('loss', 10):.4f}, {hist.seconds:.0f} s)")
        return 0
    from lib.latent.study import run

    sizes = {"one": args["n"], "two": args["n"]}
    pipes, samplers = {}, {}
    if not no_mmdit:
        pipes["mmdit"], samplers["mmdit"] = load_pipeline(ckpt), "Euler on flow_match_grid(steps, shift=1)"
    from lib.latent.train import load_pipeline as load_unet

    for name in [] if unets is None else unets or ["clip"]:
        unet = load_unet(WEIGHTS_DIR / f"shapes_ldm_{name}.safetensors")
        if unet.config.conditioning != "clip":
            parser.error(f"--unet {name}: the UNet must read the clip text tower, got {unet.config.conditioning!r}")
        pipes[f"unet_{name}"], samplers[f"unet_{name}"] = unet, "DDIM on SD's leading grid"
    from lib.latent.decoder_ft import decoder_provenance

    res: dict = {"sizes": sizes, "seeds": args["seeds"], "ws": args["ws"], "steps": args["eval_steps"],
                 "sampler": samplers, "decoder": decoder_provenance()}  # fmt: skip
    for name, pipe in pipes.items():
        res[name] = {str(k): run(pipe, args["ws"], args["seeds"], sizes, steps=k) for k in args["eval_steps"]}
    path = save_results(out or RESULTS / "mmdit.json", res, command)
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
