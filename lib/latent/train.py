"""Train the text-conditioned latent UNet on the shapes data; save and load it with the pipeline around it.

Chapter: "Latent diffusion" (``chapters/latent_diffusion.ipynb``).

    python -m lib.latent.train --conditioning grouped       # -> weights/shapes_ldm_grouped.safetensors
    python -m lib.latent.train --conditioning grouped_full  # relations on the object tokens
    python -m lib.latent.train --conditioning clip          # frozen text tower of weights/shapes_clip
    python -m lib.latent.train --conditioning clip_hardneg  # frozen text tower of weights/shapes_clip_hardneg

Data: ``make_shapes(n_train, split="train")`` (one to three objects, uniform), encoded once by the frozen
autoencoder (posterior mean, scaled); a fresh caption per image and step (templates, synonyms, word orders). Loss:
``lib.diffusion.loss.DiffusionLoss`` (eps prediction on SD's :class:`DiscreteSchedule`, ``t`` uniform on
``[1/N, 1]``, the context dropped to the UNet's learned null context with probability ``p_uncond``), through
``lib.train.train``. The checkpoint records the sha256 of the autoencoder and text encoder it was trained on, and
:func:`load_pipeline` refuses other ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lib.checkpoint import WEIGHTS_DIR, load_checkpoint, save_checkpoint, sha256
from lib.latent.conditioning import CONDITIONINGS
from lib.latent.pipeline import LatentDenoiser, LDMConfig, TextToImage

AUTOENCODER = WEIGHTS_DIR / "shapes_autoencoder.safetensors"
CLIPS = {
    "clip": WEIGHTS_DIR / "shapes_clip.safetensors",
    "clip_hardneg": WEIGHTS_DIR / "shapes_clip_hardneg.safetensors",
}


def checkpoint_path(conditioning: str) -> Path:
    """``weights/shapes_ldm_<conditioning>.safetensors``."""
    if conditioning not in CONDITIONINGS:
        raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}")
    return WEIGHTS_DIR / f"shapes_ldm_{conditioning}.safetensors"


@dataclass(frozen=True)
class LDMTrainConfig:
    """Training settings (the model's are :class:`~lib.latent.pipeline.LDMConfig`'s, built by :meth:`model`)."""

    conditioning: str = "grouped"
    """``"grouped"``, ``"grouped_full"``, ``"clip"`` or ``"clip_hardneg"``."""
    steps: int = 1500
    """Optimisation steps."""
    batch_size: int = 64
    """Latents per step."""
    lr: float = 2e-3
    """AdamW peak learning rate (one-cycle: 5% warm-up, cosine decay)."""
    p_uncond: float = 0.1
    """Probability of the null context (classifier-free guidance)."""
    n_train: int = 20000
    """Training images."""
    base_channels: int = 32
    """UNet width at 8x8."""
    context_dim: int = 64
    """Grouped token width (``clip*``: the text tower's width is used)."""
    seed: int = 0
    """Seed of initialisation, data, captions, noise and dropout."""

    def __post_init__(self) -> None:
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}")
        if min(self.steps, self.batch_size, self.n_train, self.base_channels, self.context_dim) < 1:
            raise ValueError(f"steps, batch_size, n_train, base_channels and context_dim must be positive in {self}")
        if not 0 <= self.p_uncond < 1:
            raise ValueError(f"p_uncond must be in [0, 1), got {self.p_uncond!r}")

    def model(self, context_dim: int | None = None, latent_channels: int = 4) -> LDMConfig:
        return LDMConfig(conditioning=self.conditioning, base_channels=self.base_channels,
                         context_dim=context_dim or self.context_dim, latent_channels=latent_channels)  # fmt: skip


@dataclass
class TrainedLDM:
    """A trained :class:`LatentDenoiser` with its configs and training history."""

    denoiser: LatentDenoiser
    config: LDMTrainConfig
    history: object | None = None
    metadata: dict | None = None


def shipped_autoencoder():
    """The shipped autoencoder with its fine-tuned decoder (``lib.latent.decoder_ft``; the encoder, hence the latent
    space every latent model was trained in, is the autoencoder's own), frozen, in eval mode."""
    from lib.latent.autoencoder import load_autoencoder
    from lib.latent.decoder_ft import FT_DECODER

    return load_autoencoder(AUTOENCODER, decoder=FT_DECODER).model.eval().requires_grad_(False)


def frozen_parts(conditioning: str, autoencoder=None, clip=None):
    """``(autoencoder, clip or None, {"autoencoder_sha256": ..., "clip_sha256": ...})``: the given parts, else the
    shipped checkpoints (and their sha256; ``None`` for a part passed in)."""
    from lib.latent.clip import load_clip

    shas = {"autoencoder_sha256": None, "clip_sha256": None}
    if autoencoder is None:
        autoencoder, shas["autoencoder_sha256"] = shipped_autoencoder(), sha256(AUTOENCODER)
    if conditioning in CLIPS and clip is None:
        clip, shas["clip_sha256"] = load_clip(CLIPS[conditioning]), sha256(CLIPS[conditioning])
    return autoencoder.eval().requires_grad_(False), clip, shas


def train_ldm(config: LDMTrainConfig = LDMTrainConfig(), autoencoder=None, clip=None) -> TrainedLDM:  # noqa: B008
    """Train through ``lib.train.train``; ``autoencoder`` / ``clip`` default to the shipped checkpoints."""
    from lib.data.shapes import caption, make_shapes
    from lib.diffusion.loss import DiffusionLoss
    from lib.diffusion.schedules import DiscreteSchedule
    from lib.diffusion.timesteps import TimeSampler
    from lib.latent.conditioning import ClipConditioner
    from lib.train import one_cycle, train
    from lib.utils import seed_everything

    ae, clip, shas = frozen_parts(config.conditioning, autoencoder, clip)
    text = ClipConditioner(clip) if clip is not None else None
    seed_everything(config.seed, threads=None, deterministic=False)
    model = LatentDenoiser(config.model(text.d if text else None, ae.config.latent_channels))
    data = make_shapes(config.n_train, seed=config.seed, split="train")
    with torch.no_grad():
        z = torch.cat([ae.encode(data.images[i : i + 500]) for i in range(0, len(data), 500)])  # (n, C, 8, 8)
    g = torch.Generator().manual_seed(config.seed + 1)
    rng = np.random.default_rng([config.seed, 2])
    labels = data.labels

    def batch(step: int) -> dict:
        idx = torch.randint(0, len(z), (config.batch_size,), generator=g)
        return {"z": z[idx], "labels": labels[idx], "captions": [caption(labels[i], rng) for i in idx.tolist()]}

    schedule = DiscreteSchedule()
    loss = DiffusionLoss(schedule, "eps", t_sampler=TimeSampler(t_min=1.0 / schedule.num_steps),
                         p_uncond={"context": config.p_uncond}, generator=g)  # fmt: skip

    def loss_fn(m: LatentDenoiser, b: dict) -> torch.Tensor:
        ctx, mask = m.grouped(b["labels"]) if m.grouped is not None else text(b["captions"])
        return loss(m.unet, {"x": b["z"], "context": ctx, "context_mask": mask})

    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    sched = one_cycle(opt, config.lr, config.steps)
    hist = train(model, loss_fn, batch, config.steps, optimizer=opt, scheduler=sched, grad_clip=1.0,
                 log_every=max(1, config.steps // 100), desc=f"latent UNet ({config.conditioning})")  # fmt: skip
    return TrainedLDM(model.eval(), config, hist, shas)


def save_ldm(trained: TrainedLDM, path: str | Path, command: str) -> Path:
    """Save with both configs, the final loss and the sha256 of the frozen parts it was trained on."""
    c = trained.config
    extra = {"model": dataclasses.asdict(trained.denoiser.config), **(trained.metadata or {})}
    if trained.history is not None:
        extra.update(final_loss_mean_last_10=trained.history.last("loss", 10), train_seconds=trained.history.seconds)
    return save_checkpoint(path, trained.denoiser.state_dict(), command=command, seed=c.seed,
                           config=dataclasses.asdict(c), extra=extra)  # fmt: skip


def load_pipeline(path: str | Path | None = None, conditioning: str = "grouped", autoencoder=None, clip=None):
    """A :class:`TextToImage` from a checkpoint (default ``weights/shapes_ldm_<conditioning>``) and the shipped
    autoencoder and text encoder, whose sha256 must match the ones it was trained on."""
    path = Path(path) if path is not None else checkpoint_path(conditioning)
    state, meta = load_checkpoint(path)
    model_cfg = LDMConfig(**meta["model"])
    ae, clip, shas = frozen_parts(model_cfg.conditioning, autoencoder, clip)
    for key, got in shas.items():  # the shipped parts must be the ones it was trained on
        if got is not None and meta.get(key) is not None and got != meta[key]:
            raise ValueError(
                f"{path.name} was trained on a {key[:-7]} with sha256 {meta[key][:12]}..., the shipped "
                f"one has {got[:12]}...: retrain it (python -m lib.latent.train)"
            )
    denoiser = LatentDenoiser(model_cfg)
    denoiser.load_state_dict(state)
    pipe = TextToImage(denoiser, ae, clip)
    pipe.metadata = meta
    return pipe


def main(argv: list[str] | None = None) -> int:
    from lib.utils import seed_everything

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in dataclasses.fields(LDMTrainConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    parser.add_argument("--out", type=Path, default=None, help="default weights/shapes_ldm_<conditioning>")
    parser.add_argument("--threads", type=int, default=2)
    args = vars(parser.parse_args(argv))
    out, threads = args.pop("out"), args.pop("threads")
    config = LDMTrainConfig(**args)
    seed_everything(config.seed, threads=threads)
    trained = train_ldm(config)
    command = "python -m lib.latent.train " + " ".join(sys.argv[1:] if argv is None else argv)
    path = save_ldm(trained, out or checkpoint_path(config.conditioning), command)
    print(f"saved {path} (loss {trained.history.last('loss', 10):.4f}, {trained.history.seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
