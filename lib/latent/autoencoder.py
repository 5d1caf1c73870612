"""The KL autoencoder of latent diffusion (Rombach et al., 2022, section 3 and appendix G), for 32x32 shapes.

Chapter: "Latent diffusion" (``chapters/latent_diffusion.ipynb``). The encoder maps an image ``x (B, 3, 32, 32)`` to
a diagonal Gaussian posterior ``q(z|x) = N(mu, sigma^2)`` over a ``(4, 8, 8)`` latent (downsampling factor
``f = 4``, 4 channels as Stable Diffusion); ``z = mu + sigma * eps`` (the reparameterisation trick, Kingma and
Welling, 2014); the decoder maps ``z`` back to ``x_hat``. The loss is the negative ELBO with a small KL weight:
``||x - x_hat||^2 / D + beta * KL(q(z|x) || N(0, I)) / D`` per image, ``D = 3 * 32 * 32``. Diffusion runs on
``scale_factor * z`` where ``scale_factor = 1 / std`` of training latents (Stable Diffusion's 0.18215 was computed
the same way on its first batch).

    python -m lib.latent.autoencoder [--steps N] [--batch-size B] [--latent-channels C]

Glossary
--------
mu, logvar   ``(B, C, 8, 8)`` posterior mean and log-variance ``log sigma^2``
z            ``(B, C, 8, 8)`` latent sample; ``scale_factor * z`` is what the diffusion model sees
beta         KL weight (Stable Diffusion: 1e-6 on the same per-image sums)
PSNR         ``10 log10(1 / MSE)`` on images mapped to [0, 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lib.checkpoint import WEIGHTS_DIR, load_checkpoint, remeasure, save_checkpoint

DEFAULT_CHECKPOINT = WEIGHTS_DIR / "shapes_autoencoder.safetensors"
SD_SCALE_FACTOR = 0.18215
"""Stable Diffusion v1's latent scale factor, for comparison."""


@dataclass(frozen=True)
class AutoencoderConfig:
    """Sizes and training settings of :class:`KLAutoencoder`."""

    latent_channels: int = 4
    """Latent channels ``C`` (Stable Diffusion: 4)."""
    channels: tuple[int, int] = (32, 64)
    """Widths ``(a, b)``: ``a`` at 32 and 16 pixels, ``b`` at 8 (the decoder's last layer has ``a / 2``)."""
    beta: float = 1e-6
    """KL weight."""
    steps: int = 4000
    """Optimisation steps."""
    batch_size: int = 32
    """Images per step."""
    lr: float = 2e-3
    """Adam learning rate, cosine-decayed to 0."""
    n_train: int = 20000
    """Training images, half on the plain and half on the gradient background."""
    seed: int = 0
    """Seed of initialisation, data and batches."""

    def __post_init__(self) -> None:
        if min(self.latent_channels, *self.channels, self.steps, self.batch_size, self.n_train) < 1:
            raise ValueError(f"sizes must be positive in {self}")
        if len(self.channels) != 2 or any(c % 16 for c in self.channels):
            raise ValueError(f"channels must be two multiples of 16, got {self.channels}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")


class ResBlock(nn.Module):
    """``x + conv(SiLU(GN(conv(SiLU(GN(x))))))`` at fixed width."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1),
                               nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


def _encoder(c: AutoencoderConfig) -> nn.Sequential:
    a, b = c.channels
    return nn.Sequential(
        nn.Conv2d(3, a, 3, padding=1), nn.SiLU(),  # (B, a, 32, 32)
        nn.Conv2d(a, a, 3, stride=2, padding=1), ResBlock(a),  # (B, a, 16, 16)
        nn.Conv2d(a, b, 3, stride=2, padding=1), ResBlock(b), ResBlock(b),  # (B, b, 8, 8)
        nn.GroupNorm(8, b), nn.SiLU(), nn.Conv2d(b, 2 * c.latent_channels, 3, padding=1),  # (B, 2C, 8, 8)
    )  # fmt: skip


def _decoder(c: AutoencoderConfig) -> nn.Sequential:
    a, b = c.channels
    return nn.Sequential(
        nn.Conv2d(c.latent_channels, b, 3, padding=1), ResBlock(b), ResBlock(b),  # (B, b, 8, 8)
        nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(b, a, 3, padding=1), ResBlock(a),  # (B, a, 16, 16)
        nn.GroupNorm(8, a), nn.SiLU(), nn.Conv2d(a, 2 * a, 3, padding=1), nn.PixelShuffle(2),  # (B, a/2, 32, 32)
        nn.SiLU(), nn.Conv2d(a // 2, 3, 3, padding=1),  # (B, 3, 32, 32)
    )  # fmt: skip


@dataclass
class Posterior:
    """Diagonal Gaussian ``q(z|x)``."""

    mu: torch.Tensor
    """``(B, C, 8, 8)`` mean."""
    logvar: torch.Tensor
    """``(B, C, 8, 8)`` log-variance, clamped to [-30, 20] as in the LDM code."""

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """``z = mu + sigma * eps``, ``eps ~ N(0, I)``: differentiable in ``mu`` and ``logvar``."""
        eps = torch.randn(self.mu.shape, generator=generator, device=self.mu.device, dtype=self.mu.dtype)
        return self.mu + torch.exp(0.5 * self.logvar) * eps

    def kl(self) -> torch.Tensor:
        """``KL(N(mu, sigma^2) || N(0, I)) = 1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2)`` per image, ``(B,)``."""
        return 0.5 * (self.mu**2 + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)


class KLAutoencoder(nn.Module):
    """Encoder to :class:`Posterior`, decoder back to pixels, and the latent ``scale_factor`` buffer."""

    def __init__(self, config: AutoencoderConfig = AutoencoderConfig()) -> None:  # noqa: B008
        super().__init__()
        self.config = config
        self.encoder, self.decoder = _encoder(config), _decoder(config)
        self.register_buffer("scale_factor", torch.tensor(1.0))

    def posterior(self, x: torch.Tensor) -> Posterior:
        """``x (B, 3, 32, 32)`` in [-1, 1] -> ``q(z|x)``."""
        if not torch.is_tensor(x) or x.dim() != 4 or x.shape[1:] != (3, 32, 32):
            raise ValueError(f"x must have shape (B, 3, 32, 32), got {tuple(getattr(x, 'shape', ()))}")
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return Posterior(mu, logvar.clamp(-30.0, 20.0))

    def encode(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latent ``scale_factor * z`` ``(B, C, 8, 8)``; ``z = mu`` unless ``sample``."""
        q = self.posterior(x)
        return self.scale_factor * (q.sample(generator) if sample else q.mu)

    def decode(self, z_scaled: torch.Tensor) -> torch.Tensor:
        """``x_hat (B, 3, 32, 32)`` of a scaled latent ``(B, C, 8, 8)``."""
        C = self.config.latent_channels
        if not torch.is_tensor(z_scaled) or z_scaled.dim() != 4 or z_scaled.shape[1:] != (C, 8, 8):
            raise ValueError(f"z_scaled must have shape (B, {C}, 8, 8), got {tuple(getattr(z_scaled, 'shape', ()))}")
        return self.decoder(z_scaled / self.scale_factor)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Posterior]:
        """Reconstruction of a posterior sample, and the posterior."""
        q = self.posterior(x)
        return self.decoder(q.sample()), q


def elbo_loss(model: KLAutoencoder, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """``mean_B(||x - x_hat||^2 + beta * KL) / D``, with the two terms logged."""
    x_hat, q = model(x)
    D = x[0].numel()
    rec = (x_hat - x).pow(2).flatten(1).sum(1).mean() / D
    kl = q.kl().mean() / D
    return {"loss": rec + model.config.beta * kl, "rec": rec, "kl": kl}


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1], measured in [0, 1]: ``10 log10(1 / mean((x - y)^2 / 4))``."""
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    mse = float(((x.clamp(-1, 1) - y.clamp(-1, 1)) / 2).pow(2).mean())
    return 10 * math.log10(1.0 / mse) if mse > 0 else float("inf")


@torch.no_grad()
def latent_std(model: KLAutoencoder, x: torch.Tensor, generator: torch.Generator | None = None) -> float:
    """Standard deviation of all elements of posterior samples ``z`` of ``x`` (unscaled): ``scale_factor = 1 / it``."""
    return float(model.posterior(x).sample(generator).flatten().std())


@torch.no_grad()
def reconstruct(model: KLAutoencoder, x: torch.Tensor, chunk: int = 500) -> torch.Tensor:
    """``decode(encode(x))`` with ``z = mu``, clamped to [-1, 1], in chunks."""
    model.eval()
    return torch.cat([model.decode(model.encode(x[i : i + chunk])).clamp(-1, 1) for i in range(0, len(x), chunk)])


@dataclass
class TrainedAutoencoder:
    """A trained autoencoder (``scale_factor`` set) with its config, history and metadata."""

    model: KLAutoencoder
    config: AutoencoderConfig
    history: object | None = None
    metadata: dict | None = None


def training_images(n_train: int, seed: int) -> torch.Tensor:
    """The autoencoder's training set ``(n_train, 3, 32, 32)``: ``make_shapes(split="train")``, half on the plain
    background (seed ``seed``) and half on the gradient one (seed ``seed + 1``)."""
    from lib.data.shapes import ShapesConfig, make_shapes

    half, gradient = max(1, n_train // 2), ShapesConfig(background="gradient")
    plain = make_shapes(half, seed=seed, split="train").images
    return torch.cat([plain, make_shapes(half, seed=seed + 1, split="train", config=gradient).images])


def train_autoencoder(config: AutoencoderConfig = AutoencoderConfig()) -> TrainedAutoencoder:  # noqa: B008
    """Train on ``make_shapes(split="train")`` (half plain, half gradient background) through ``lib.train.train``,
    then set ``scale_factor = 1 / latent_std`` on the first 2000 training images (plain: what diffusion sees)."""
    from lib.train import one_cycle, train
    from lib.utils import seed_everything

    seed_everything(config.seed, threads=None, deterministic=False)
    model = KLAutoencoder(config)
    x_train = training_images(config.n_train, config.seed)
    g = torch.Generator().manual_seed(config.seed + 1)

    def batch(step: int) -> torch.Tensor:
        return x_train[torch.randint(0, len(x_train), (config.batch_size,), generator=g)]

    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = one_cycle(opt, config.lr, config.steps)
    hist = train(model, elbo_loss, batch, config.steps, optimizer=opt, scheduler=sched, grad_clip=1.0,
                 log_every=max(1, config.steps // 200), desc="KL autoencoder")  # fmt: skip
    model.eval()
    model.scale_factor.fill_(1.0 / latent_std(model, x_train[:2000], torch.Generator().manual_seed(config.seed + 2)))
    return TrainedAutoencoder(model, config, hist)


def save_autoencoder(trained: TrainedAutoencoder, path: str | Path, command: str, extra: dict | None = None) -> Path:
    """Save as a verified checkpoint (``scale_factor`` is in the state dict)."""
    return save_checkpoint(path, trained.model.state_dict(), command=command, seed=trained.config.seed,
                           config=dataclasses.asdict(trained.config), extra=extra)  # fmt: skip


def load_autoencoder(path: str | Path = DEFAULT_CHECKPOINT, decoder: str | Path | None = None) -> TrainedAutoencoder:
    """Load a checkpoint written by :func:`save_autoencoder` (sha256 verified), in eval mode; with ``decoder``, a
    decoder fine-tuned on it (``lib.latent.decoder_ft``, refused if made for another autoencoder) replaces its own."""
    state, meta = load_checkpoint(path)
    config = AutoencoderConfig(**dict(meta["config"], channels=tuple(meta["config"]["channels"])))
    model = KLAutoencoder(config)
    model.load_state_dict(state)
    if decoder is not None:
        dec_state, dec_meta = load_checkpoint(decoder)
        if dec_meta.get("autoencoder_sha256") != meta["sha256"]:
            raise ValueError(f"{Path(decoder).name} was fine-tuned on another autoencoder than {Path(path).name}")
        model.load_state_dict({**state, **dec_state})
        meta = {**meta, "decoder": {"file": Path(decoder).name, "sha256": dec_meta["sha256"]}}
    return TrainedAutoencoder(model.eval(), config, None, meta)


def evaluate_autoencoder(trained: TrainedAutoencoder, n: int = 1000, seed: int = 1) -> dict:
    """Test PSNR (plain and gradient backgrounds, held-out split), latent statistics and, when the attribute judge's
    checkpoint exists, its per-attribute accuracy on real test images and on their reconstructions."""
    from lib.data.shapes import ShapesConfig, make_shapes

    model = trained.model.eval()
    out: dict = {"scale_factor": float(model.scale_factor), "sd_scale_factor": SD_SCALE_FACTOR}
    test = make_shapes(n, seed=seed, split="test")
    rec = reconstruct(model, test.images)
    out["psnr_test"] = psnr(rec, test.images)
    out["psnr_test_per_image_min"] = min(psnr(r[None], x[None]) for r, x in zip(rec, test.images, strict=True))
    grad = make_shapes(n, seed=seed, split="test", config=ShapesConfig(background="gradient"))
    out["psnr_test_gradient"] = psnr(reconstruct(model, grad.images), grad.images)
    held = make_shapes(n, seed=seed, split="heldout")
    out["psnr_heldout"] = psnr(reconstruct(model, held.images), held.images)
    with torch.no_grad():
        out["scaled_latent_std_test"] = float(model.encode(test.images).std())
    if (WEIGHTS_DIR / "shapes_judge.safetensors").exists():
        from lib.latent.judge import attribute_accuracy, default_judge

        j = default_judge()
        out["judge_real_test"] = attribute_accuracy(test.images, test.labels, test.masks, j)
        out["judge_reconstructions_test"] = attribute_accuracy(rec, test.labels, test.masks, j)
    return out


def main(argv: list[str] | None = None) -> int:
    from lib.utils import save_results, seed_everything

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in dataclasses.fields(AutoencoderConfig):
        if f.name != "channels":
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    parser.add_argument("--channels", type=int, nargs=2, default=list(AutoencoderConfig.channels))
    parser.add_argument("--out", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parents[2] / "results" / "latent"
                        / "autoencoder.json")  # fmt: skip
    parser.add_argument("--n-eval", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--evaluate-only", action="store_true", help="load --out and re-measure (e.g. the judge)")
    args = vars(parser.parse_args(argv))
    out, results, n_eval, threads, only = (
        args.pop(k) for k in ("out", "results", "n_eval", "threads", "evaluate_only")
    )
    command = "python -m lib.latent.autoencoder " + " ".join(sys.argv[1:] if argv is None else argv)
    if only:
        torch.set_num_threads(threads)
        trained = load_autoencoder(out)
        remeasure(trained, evaluate_autoencoder(trained, n_eval), results, out, command)
        return 0
    config = AutoencoderConfig(**dict(args, channels=tuple(args["channels"])))
    seed_everything(config.seed, threads=threads)
    trained = train_autoencoder(config)
    hist = trained.history
    figures = {"config": dataclasses.asdict(config), "train_seconds": hist.seconds,
               "final_rec_mean_last_10": hist.last("rec", 10), "final_kl_mean_last_10": hist.last("kl", 10),
               "n_parameters": sum(p.numel() for p in trained.model.parameters()),
               **evaluate_autoencoder(trained, n_eval)}  # fmt: skip
    path = save_autoencoder(trained, out, command, extra={"results": figures})
    save_results(results, figures, command=command)
    print(f"saved {path} and {results}: {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
