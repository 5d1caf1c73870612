"""A VP-SDE score model for scikit-learn's 8x8 digits: config, training (through ``lib.train.train``),
checkpoint save/load, and the command that makes the shipped checkpoint.

Chapter: "Diffusion as stochastic differential equations" (``chapters/diffusion_sde.ipynb``).

    python -m lib.diffusion.train_digits --steps 20000 --out weights/digits_vp_mlp.safetensors

The chapter trains a short run of the same config itself and loads the checkpoint for the longer one.
The network is ``lib.nn.unet.TimeMLP`` on the flattened 64 pixels, predicting ``eps``; ``--arch unet`` trains the
UNet of ``lib.nn.unet`` instead, with ``--base-channels`` (default 32) as its width (``--hidden`` is the MLP's).

Guidance chapter: ``--num-classes 10 --p-uncond 0.15`` trains the class-conditional model ``eps(x_t, t, y)`` with
condition dropout (Ho and Salimans 2022; label 10 is the null label), the model of classifier-free guidance:

    python -m lib.diffusion.train_digits --steps 20000 --ema-decay 0.999 --num-classes 10 --p-uncond 0.15 \
        --threads 1 --out weights/digits_cond_mlp.safetensors

and its briefly trained variant (a tenth of the steps, EMA 0.99), where guidance visibly lifts accuracy:

    python -m lib.diffusion.train_digits --steps 2000 --ema-decay 0.99 --num-classes 10 --p-uncond 0.15 \
        --threads 1 --out weights/digits_cond_mlp_brief.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from lib.checkpoint import WEIGHTS_DIR, load_checkpoint, save_checkpoint
from lib.diffusion.ema import EMA, EMAStep
from lib.diffusion.loss import DiffusionLoss
from lib.diffusion.schedules import VPSDE
from lib.diffusion.timesteps import TimeSampler
from lib.nn.unet import MLPConfig, TimeMLP, UNet, UNetConfig
from lib.utils import get_device, seed_everything

DEFAULT_CHECKPOINT = WEIGHTS_DIR / "digits_vp_mlp.safetensors"


@dataclass(frozen=True)
class DigitsDiffusionConfig:
    """Model and training settings of the digits score model."""

    arch: str = "mlp"
    """``"mlp"`` (TimeMLP on 64 pixels) or ``"unet"``."""
    hidden: int = 256
    """MLP width (``mlp`` only)."""
    base_channels: int = 32
    """UNet channels at full resolution (``unet`` only)."""
    depth: int = 3
    """MLP residual blocks (ignored by ``unet``)."""
    time_dim: int = 128
    """Time-embedding width."""
    steps: int = 1500
    """Optimisation steps."""
    batch_size: int = 128
    """Minibatch size."""
    lr: float = 2e-3
    """Adam learning rate, cosine-decayed to 0."""
    ema_decay: float = 0.0
    """EMA decay of the sampled weights (0: no EMA)."""
    beta_min: float = 0.1
    """VP-SDE beta(0)."""
    beta_max: float = 20.0
    """VP-SDE beta(1)."""
    t_eps: float = 1e-3
    """Smallest training time."""
    seed: int = 0
    """Seed of initialisation, batches and noise."""
    num_classes: int = 0
    """Class-conditional on the digit label when > 0 (10 for digits; label ``num_classes`` = null); 0: unconditional."""
    p_uncond: float = 0.0
    """Condition dropout probability (classifier-free guidance training); needs ``num_classes > 0``."""

    def __post_init__(self) -> None:
        if self.arch not in ("mlp", "unet"):
            raise ValueError(f"arch must be 'mlp' or 'unet', got {self.arch!r}")
        if min(self.steps, self.batch_size, self.hidden, self.depth, self.base_channels) < 1:
            raise ValueError("steps, batch_size, hidden, depth and base_channels must be positive")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {self.num_classes!r}")
        if not 0 <= self.p_uncond <= 1 or (self.p_uncond > 0 and self.num_classes == 0):
            raise ValueError(f"p_uncond must be in [0, 1] and needs num_classes > 0, got {self.p_uncond!r}")

    @property
    def sde(self) -> VPSDE:
        return VPSDE(self.beta_min, self.beta_max)


def make_model(config: DigitsDiffusionConfig) -> torch.nn.Module:
    """The untrained network of ``config``: ``model(x (B, 1, 8, 8), t (B,)[, y (B,)]) -> eps_hat (B, 1, 8, 8)``."""
    k = config.num_classes or None
    if config.arch == "unet":
        return UNet(UNetConfig(base_channels=config.base_channels, time_dim=config.time_dim, num_classes=k))
    return TimeMLP(MLPConfig(dim=64, hidden=config.hidden, depth=config.depth, time_dim=config.time_dim,
                             num_classes=k, image_shape=(1, 8, 8)))  # fmt: skip


@dataclass
class TrainedDigits:
    """A trained digits model (EMA weights when ``ema_decay > 0``) with its config and training history."""

    model: torch.nn.Module
    config: DigitsDiffusionConfig
    history: object | None = None
    metadata: dict | None = None


def train_digits_diffusion(config: DigitsDiffusionConfig = DigitsDiffusionConfig(), device=None) -> TrainedDigits:  # noqa: B008
    """Train the eps-prediction model (DDPM's simple loss) on the digits train split through ``lib.train.train``;
    with ``num_classes > 0`` the batches are ``(x, y)`` and labels are dropped with probability ``p_uncond``."""
    from lib.data.digits import load_digits
    from lib.train import train

    device = get_device(device) if not isinstance(device, torch.device) else device
    seed_everything(config.seed, threads=None, deterministic=False)  # model initialisation
    model = make_model(config).to(device)
    data = load_digits("train")
    x_train, y_train = data.x.to(device), data.y.to(device)
    g = torch.Generator().manual_seed(config.seed + 1)

    def batch(step: int):
        idx = torch.randint(0, len(x_train), (config.batch_size,), generator=g).to(device)
        return (x_train[idx], y_train[idx]) if config.num_classes else x_train[idx]

    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.steps)
    ema = EMA(model, config.ema_decay) if config.ema_decay > 0 else None
    step_fn = EMAStep(opt, ema) if ema is not None else None
    loss = DiffusionLoss(config.sde, "eps", t_sampler=TimeSampler(t_min=config.t_eps), p_uncond=config.p_uncond)
    hist = train(model, loss, batch, config.steps, optimizer=None if step_fn else opt, step_fn=step_fn,
                 scheduler=sched, log_every=max(1, config.steps // 200), desc="digits VP-SDE")  # fmt: skip
    final = ema.model if ema is not None else model
    return TrainedDigits(final.eval(), config, hist)


def save_digits(trained: TrainedDigits, path: str | Path, command: str) -> Path:
    """Save ``trained`` with its config and final loss as a verified checkpoint."""
    hist = trained.history
    extra = {"final_loss_mean_last_50": hist.last("loss", 50) if hist is not None else None,
             "train_seconds": getattr(hist, "seconds", None)}  # fmt: skip
    return save_checkpoint(path, trained.model.state_dict(), command=command, seed=trained.config.seed,
                           config=dataclasses.asdict(trained.config), extra=extra)  # fmt: skip


def load_digits_diffusion(path: str | Path = DEFAULT_CHECKPOINT) -> TrainedDigits:
    """Load a checkpoint written by :func:`save_digits` (sha256 verified); returns the model in eval mode."""
    state, meta = load_checkpoint(path)
    config = DigitsDiffusionConfig(**meta["config"])
    model = make_model(config)
    model.load_state_dict(state)
    return TrainedDigits(model.eval(), config, None, meta)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in dataclasses.fields(DigitsDiffusionConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    parser.add_argument("--out", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--threads", type=int, default=2)
    args = vars(parser.parse_args(argv))
    out, threads = args.pop("out"), args.pop("threads")
    config = DigitsDiffusionConfig(**args)
    seed_everything(config.seed, threads=threads)
    trained = train_digits_diffusion(config)
    command = "python -m lib.diffusion.train_digits " + " ".join(sys.argv[1:] if argv is None else argv)
    path = save_digits(trained, out, command)
    print(f"saved {path} (loss {trained.history.last('loss', 50):.4f}, {trained.history.seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
