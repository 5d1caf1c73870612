"""Train a ControlNet on the shapes data over the frozen latent-diffusion pipeline; sample under control; mask IoU.

Chapter: "ControlNet" (``chapters/controlnet.ipynb``). Model: :mod:`lib.latent.controlnet`.

    python -m lib.latent.controlnet_train train --kind mask                  # -> weights/shapes_controlnet_mask
    python -m lib.latent.controlnet_train train --kind mask --p-empty 0      # the no-empty-caption ablation
    python -m lib.latent.controlnet_train train --kind mask --seed 1         # -> weights/shapes_controlnet_mask_s1

Training: the frozen pipeline's autoencoder latents of ``make_shapes(n_train, split="train")``, their condition
images (:func:`~lib.latent.controlnet.condition_image`), and their context (labels or captions, as the frozen UNet
was trained); with probability ``p_empty`` the context is the UNet's null context (the empty caption, 50% in Zhang
et al.) so that the ControlNet must read the layout from the condition itself. Loss: ``lib.diffusion.loss.
DiffusionLoss`` (eps on SD's discrete schedule) through ``lib.train.train``; only the ControlNet is optimised.
Every ``eval_every`` steps the mask IoU of controlled samples of a fixed test set (fixed noise) is logged: the
"sudden convergence" curve (IoU vs step), saved with the checkpoint and in ``results/controlnet/train_<name>.json``;
the test layouts and the noise are the same for every training seed, so curves of different seeds compare.

The IoU study over trained ControlNets and their composition: :mod:`lib.latent.controlnet_study`.

Mask IoU: each generated image is segmented against its background (``lib.latent.judge.segment``, exact for this
data); each requested object's mask is compared with the segment overlapping it most, ``|A and B| / |A or B|``
(0 if none). Test conditions come from the ``"test"`` split with other seeds: layouts not in the training set.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from lib.checkpoint import WEIGHTS_DIR, load_checkpoint, save_checkpoint, sha256
from lib.latent.controlnet import ControlledUNet, ControlNet, ControlNetConfig, condition_image

RESULTS = Path(__file__).resolve().parents[2] / "results" / "controlnet"
KINDS = ("mask", "edges")
TEXT_ONLY = "text only (frozen)"


@dataclass(frozen=True)
class ControlTrainConfig:
    """One ControlNet training run."""

    kind: str = "mask"
    """Condition image: ``"mask"`` (union of object masks) or ``"edges"``."""
    conditioning: str = "grouped"
    """Which frozen latent UNet (``weights/shapes_ldm_<conditioning>``) to control."""
    steps: int = 1000
    """Optimisation steps."""
    batch_size: int = 64
    """Latents per step."""
    lr: float = 1e-3
    """Adam learning rate (constant; Zhang et al. use a constant 1e-5 at SD's scale)."""
    p_empty: float = 0.5
    """Probability that the context is the empty caption (the UNet's null context)."""
    n_train: int = 20000
    """Training images."""
    seed: int = 0
    """Seed of initialisation, batches, noise and dropout (the images are always the latent UNet's, seed 0)."""
    eval_every: int = 50
    """Steps between IoU evaluations (the convergence curve)."""
    eval_n: int = 48
    """Test images per evaluation."""
    eval_steps: int = 10
    """DDIM steps of the evaluation samples."""
    w: float = 2.0
    """Guidance weight of the evaluation samples (Ho and Salimans' w)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if min(self.steps, self.batch_size, self.n_train, self.eval_every, self.eval_n, self.eval_steps) < 1:
            raise ValueError(
                f"steps, batch_size, n_train, eval_every, eval_n and eval_steps must be positive in {self}"
            )
        if not 0 <= self.p_empty <= 1:
            raise ValueError(f"p_empty must be in [0, 1], got {self.p_empty!r}")

    @property
    def name(self) -> str:
        """``shapes_controlnet_<kind>[_noempty][_s<seed>]`` (p_empty 0.5 and seed 0 have the short name)."""
        return (f"shapes_controlnet_{self.kind}" + ("" if self.p_empty > 0 else "_noempty")
                + ("" if self.seed == 0 else f"_s{self.seed}"))  # fmt: skip


@dataclass
class TrainedControlNet:
    """A trained ControlNet with its config, history and convergence curve."""

    controlnet: ControlNet
    config: ControlTrainConfig
    history: object | None = None
    curve: list[dict] | None = None
    """``[{"step", "iou", "iou_large", "iou_small"}]``, step 0 = initialisation."""


def mask_iou(images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per requested object: ``(iou (M,), size (M,))`` of ``images (N, 3, 32, 32)`` against ``masks (N, K, 32, 32)``
    with ``labels (N, K, 5)`` (absent rows skipped; ``size`` is the label's size index, 1 = large)."""
    from lib.latent.judge import segment

    if masks.dim() != 4 or masks.shape[0] != len(images) or labels.shape[:2] != masks.shape[:2]:
        raise ValueError(
            f"masks (N, K, H, W) and labels (N, K, 5) must match images, got {masks.shape}, {labels.shape}"
        )
    ious, sizes = [], []
    for objs, ms, lab in zip(segment(images), masks, labels, strict=True):
        for m, row in zip(ms, lab, strict=True):
            if row[0] < 0:
                continue
            best = max(((o.mask & m).sum() / (o.mask | m).sum() for o in objs if (o.mask & m).any()), default=None)
            ious.append(0.0 if best is None else float(best))
            sizes.append(int(row[2]))
    return torch.tensor(ious), torch.tensor(sizes)


def iou_summary(images: torch.Tensor, batch) -> dict[str, float]:
    """Mean IoU over all, large and small requested objects of a :class:`~lib.data.shapes.ShapesBatch`."""
    iou, size = mask_iou(images, batch.masks, batch.labels)
    mean = lambda v: float(v.mean()) if len(v) else float("nan")
    return {"iou": mean(iou), "iou_large": mean(iou[size == 1]), "iou_small": mean(iou[size == 0]),
            "n_objects": len(iou)}  # fmt: skip


@torch.no_grad()
def generate_controlled(pipe, model: ControlledUNet, condition: torch.Tensor, captions=None, labels=None, *,
                        w: float = 2.0, steps: int = 20, generator: torch.Generator | None = None,
                        strength=1.0, empty: bool = False) -> torch.Tensor:  # fmt: skip
    """Images ``(B, 3, 32, 32)`` of the frozen ``pipe`` (a ``lib.latent.pipeline.TextToImage``) with ``model``'s
    residuals added: CFG weight ``w`` (the condition image acts on both halves), DDIM on SD's grid; ``empty`` uses
    the empty caption (null context) instead of the captions / labels."""
    from lib.diffusion.discrete import sd_ddim
    from lib.diffusion.guidance import guided_denoiser
    from lib.diffusion.predictions import Denoiser

    if not isinstance(w, (int, float)) or w < 0:
        raise ValueError(f"w must be a number >= 0, got {w!r}")
    ctx, mask = pipe.context(captions, labels)
    if empty:
        ones = torch.ones(len(ctx), dtype=torch.bool)
        null = model.null_condition({"context": ctx, "context_mask": mask}, {"context": ones})
        ctx, mask = null["context"], null["context_mask"]
    if condition.shape[0] != ctx.shape[0]:
        raise ValueError(f"condition must have one image per prompt ({ctx.shape[0]}), got {tuple(condition.shape)}")
    cond = {"context": ctx, "context_mask": mask, "condition": condition, "strength": strength}
    den = Denoiser(model, "eps", **cond) if w == 0 or empty else guided_denoiser(model, "eps", w=float(w), **cond)
    z_T = torch.randn((ctx.shape[0], *pipe.latent_shape), generator=generator)
    return pipe.decode(sd_ddim(den, z_T, steps, pipe.scheduler, generator=generator).x)


def train_controlnet(config: ControlTrainConfig = ControlTrainConfig(), pipe=None) -> TrainedControlNet:  # noqa: B008
    """Train through ``lib.train.train``; ``pipe`` defaults to the shipped pipeline of ``config.conditioning``."""
    from lib.data.shapes import make_shapes
    from lib.diffusion.loss import DiffusionLoss
    from lib.diffusion.timesteps import TimeSampler
    from lib.latent.controlnet_study import unseen_layouts
    from lib.latent.train import load_pipeline
    from lib.train import train

    pipe = pipe if pipe is not None else load_pipeline(conditioning=config.conditioning)
    unet = pipe.denoiser.unet
    torch.manual_seed(config.seed)
    net = ControlNet.from_unet(unet, ControlNetConfig(condition_channels=1))
    model = ControlledUNet(unet, net)
    data = make_shapes(config.n_train, seed=0, split="train")  # the latent UNet's training images (seed 0)
    cond_all = condition_image(data, config.kind)
    with torch.no_grad():
        z = torch.cat([pipe.autoencoder.encode(data.images[i : i + 500]) for i in range(0, len(data), 500)])
    g = torch.Generator().manual_seed(config.seed + 1)

    def batch(step: int) -> dict:
        idx = torch.randint(0, len(z), (config.batch_size,), generator=g)
        ctx, mask = pipe.context([data.captions[i] for i in idx.tolist()], data.labels[idx])
        return {"x": z[idx], "context": ctx, "context_mask": mask, "condition": cond_all[idx]}

    schedule = pipe.schedule
    loss = DiffusionLoss(schedule, "eps", t_sampler=TimeSampler(t_min=1.0 / schedule.num_steps),
                         p_uncond={"context": config.p_empty}, generator=g)  # fmt: skip
    test = unseen_layouts(config.eval_n, seed=1000, n_train=config.n_train)  # the same for every seed
    test_cond = condition_image(test, config.kind)
    curve: list[dict] = []

    def evaluate(m: ControlledUNet, step: int) -> dict:
        gen = torch.Generator().manual_seed(12345)  # the same noise at every evaluation
        images = generate_controlled(pipe, m, test_cond, test.captions, test.labels, w=config.w,
                                     steps=config.eval_steps, generator=gen)  # fmt: skip
        out = iou_summary(images, test)
        curve.append({"step": step, **{k: out[k] for k in ("iou", "iou_large", "iou_small")}})
        return out

    evaluate(model.eval(), 0)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    hist = train(model, loss, batch, config.steps, optimizer=opt, grad_clip=1.0,
                 eval_fn=lambda m: evaluate(m, len(curve) * config.eval_every), eval_every=config.eval_every,
                 log_every=max(1, config.steps // 100), desc=f"ControlNet ({config.kind})")  # fmt: skip
    curve[-1]["step"] = config.steps  # the last evaluation runs after the last step
    return TrainedControlNet(net.eval(), config, hist, curve)


def snap_step(curve: list[dict], key: str = "iou") -> int:
    """The first logged step whose IoU is past halfway from the initial to the final value (where a snap would be)."""
    if len(curve) < 2:
        raise ValueError("curve needs at least two points")
    lo, hi = curve[0][key], curve[-1][key]
    return next(p["step"] for p in curve if p[key] >= (lo + hi) / 2)


def save_controlnet(trained: TrainedControlNet, path: str | Path, command: str, ldm_path: str | Path) -> Path:
    """Save with the configs, the curve and the sha256 of the frozen latent UNet it was trained on."""
    net, c = trained.controlnet, trained.config
    extra = {"unet_config": dataclasses.asdict(net.unet_config), "controlnet_config": dataclasses.asdict(net.config),
             "ldm_sha256": sha256(ldm_path), "curve": trained.curve}  # fmt: skip
    if trained.history is not None:
        extra.update(final_loss_mean_last_10=trained.history.last("loss", 10), train_seconds=trained.history.seconds)
    return save_checkpoint(path, net.state_dict(), command=command, seed=c.seed, config=dataclasses.asdict(c),
                           extra=extra)  # fmt: skip


def load_controlnet(path: str | Path, pipe=None) -> tuple[ControlNet, dict]:
    """``(ControlNet, metadata)`` from a checkpoint; with ``pipe`` (its ``metadata`` a loaded latent-UNet sidecar),
    checks the ControlNet was trained on that UNet."""
    from lib.nn.unet import UNetConfig

    state, meta = load_checkpoint(path)
    ucfg = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["unet_config"].items()}
    ccfg = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["controlnet_config"].items()}
    net = ControlNet(UNetConfig(**ucfg), ControlNetConfig(**ccfg))
    net.load_state_dict(state)
    sha = (getattr(pipe, "metadata", None) or {}).get("sha256")
    if sha is not None and sha != meta["ldm_sha256"]:
        raise ValueError(
            f"{Path(path).name} was trained on a latent UNet with sha256 {meta['ldm_sha256'][:12]}..., the "
            f"pipeline's has {sha[:12]}...: retrain it (python -m lib.latent.controlnet_train)"
        )
    return net.eval(), meta


def main(argv: list[str] | None = None) -> int:
    from lib.latent.decoder_ft import decoder_provenance
    from lib.latent.train import checkpoint_path
    from lib.utils import save_results, seed_everything

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train one ControlNet (the study: python -m lib.latent.controlnet_study)")
    for f in dataclasses.fields(ControlTrainConfig):
        tr.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    tr.add_argument("--decoder", choices=("finetuned", "original"), default="finetuned",
                    help="decoder of the logged IoU curve (training itself never decodes)")  # fmt: skip
    tr.add_argument("--no-checkpoint", action="store_true", help="log the curve only (e.g. a replay of a few steps)")
    tr.add_argument("--results", default=None, help="default results/controlnet/train_<name>.json")
    tr.add_argument("--threads", type=int, default=1)
    args = vars(parser.parse_args(argv))
    command = "python -m lib.latent.controlnet_train " + " ".join(sys.argv[1:] if argv is None else argv)
    args.pop("cmd")
    threads, decoder, no_ckpt, out = (
        args.pop("threads"),
        args.pop("decoder"),
        args.pop("no_checkpoint"),
        args.pop("results"),
    )
    config = ControlTrainConfig(**args)
    seed_everything(config.seed, threads=threads, deterministic=False)
    trained = train_controlnet(config, _pipeline(config.conditioning, decoder))
    path = None
    if not no_ckpt:
        path = save_controlnet(trained, WEIGHTS_DIR / f"{config.name}.safetensors", command,
                               checkpoint_path(config.conditioning))  # fmt: skip
    results = {"config": dataclasses.asdict(config), "curve": trained.curve, "snap_step": snap_step(trained.curve),
               "train_seconds": trained.history.seconds, "checkpoint": path.name if path else None,
               "curve_decoder": decoder_provenance(original=decoder == "original")}  # fmt: skip
    out = out or RESULTS / f"train_{config.name[len('shapes_controlnet_') :]}.json"
    save_results(out, results, command=command)
    print(f"saved {path or out}: curve {[round(p['iou'], 3) for p in trained.curve]}, {trained.history.seconds:.0f} s")
    return 0


def _pipeline(conditioning: str, decoder: str):
    """The shipped pipeline; with ``decoder="original"`` decoding with the autoencoder's own decoder."""
    from lib.latent.train import load_pipeline

    if decoder == "finetuned":
        return load_pipeline(conditioning=conditioning)
    from lib.latent.autoencoder import load_autoencoder
    from lib.latent.train import AUTOENCODER

    ae = load_autoencoder(AUTOENCODER).model.eval().requires_grad_(False)
    return load_pipeline(conditioning=conditioning, autoencoder=ae)


if __name__ == "__main__":
    sys.exit(main())
