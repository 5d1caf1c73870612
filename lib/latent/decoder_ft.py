"""Decoder-only fine-tuning of the KL autoencoder: a sharper decoder over the same latent space.

Chapter: "Latent diffusion" (``chapters/latent_diffusion.ipynb``). Every latent UNet, ControlNet and MMDiT of the
book was trained on the latents of ``weights/shapes_autoencoder``'s encoder. Retraining the whole autoencoder would
move that latent space and invalidate them all; fine-tuning **only the decoder** leaves the encoder (and the scale
factor) bit for bit unchanged, so the new decoder is a drop-in replacement. Stability AI's ``sd-vae-ft-mse`` decoder
for Stable Diffusion v1 was made the same way, for the same reason.

The decoder is trained on ``||D(z) - x||^2`` with the encoder frozen. ``z`` is the posterior mean (what the
pipelines decode: DDIM ends at a point, not a posterior sample) or, with ``--sample``, a posterior sample as in the
ELBO's reconstruction term (the ablation of that choice).

    python -m lib.latent.decoder_ft [--steps N] [--sample]   # -> weights/shapes_decoder_ft.safetensors

The checkpoint holds the decoder's tensors and the sha256 of the autoencoder it belongs to;
``lib.latent.autoencoder.load_autoencoder(decoder=...)`` refuses it on another autoencoder.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from lib.checkpoint import WEIGHTS_DIR, save_checkpoint, sha256
from lib.latent.autoencoder import (
    DEFAULT_CHECKPOINT,
    KLAutoencoder,
    evaluate_autoencoder,
    load_autoencoder,
    training_images,
)

FT_DECODER = WEIGHTS_DIR / "shapes_decoder_ft.safetensors"


def decoder_provenance(original: bool = False) -> dict:
    """File and sha256 of the decoder the shipped pipelines decode with (``lib.latent.train.shipped_autoencoder``:
    the fine-tuned one), for results files; ``original=True`` names the autoencoder's own decoder instead (results
    decoded before the fine-tuned one existed, or on purpose)."""
    path = DEFAULT_CHECKPOINT if original else FT_DECODER
    return {"file": path.name + (" (its own decoder)" if original else ""), "sha256": sha256(path)}


@dataclass(frozen=True)
class DecoderFTConfig:
    """Settings of :func:`finetune_decoder`."""

    steps: int = 2000
    """Optimisation steps."""
    batch_size: int = 32
    """Images per step."""
    lr: float = 5e-4
    """Adam learning rate, one-cycle."""
    sample: bool = False
    """Decode posterior samples ``mu + sigma * eps`` instead of the means ``mu``."""
    n_train: int = 20000
    """Training images, half plain and half gradient background (the autoencoder's own training set)."""
    seed: int = 0
    """Seed of the data and batches (the autoencoder's data seed)."""

    def __post_init__(self) -> None:
        if min(self.steps, self.batch_size, self.n_train) < 1 or not self.lr > 0:
            raise ValueError(f"steps, batch_size, n_train and lr must be positive in {self}")


def finetune_decoder(model: KLAutoencoder, config: DecoderFTConfig = DecoderFTConfig()):  # noqa: B008
    """Fine-tune ``model.decoder`` in place through ``lib.train.train``, the encoder frozen; returns the history."""
    from lib.train import one_cycle, train
    from lib.utils import seed_everything

    seed_everything(config.seed, threads=None, deterministic=False)
    x = training_images(config.n_train, config.seed)
    model.eval().requires_grad_(False)
    with torch.no_grad():
        q = [model.posterior(x[i : i + 500]) for i in range(0, len(x), 500)]
    mu, logvar = torch.cat([p.mu for p in q]), torch.cat([p.logvar for p in q])  # (n, C, 8, 8)
    g = torch.Generator().manual_seed(config.seed + 3)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(x), (config.batch_size,), generator=g)
        z = mu[idx]
        if config.sample:
            z = z + torch.exp(0.5 * logvar[idx]) * torch.randn(z.shape, generator=g)
        return z, x[idx]

    def loss_fn(decoder: torch.nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return (decoder(b[0]) - b[1]).pow(2).mean()

    decoder = model.decoder.requires_grad_(True)
    opt = torch.optim.Adam(decoder.parameters(), lr=config.lr)
    sched = one_cycle(opt, config.lr, config.steps)
    hist = train(decoder, loss_fn, batch, config.steps, optimizer=opt, scheduler=sched,
                 log_every=max(1, config.steps // 100), desc="decoder fine-tuning")  # fmt: skip
    model.eval().requires_grad_(False)
    return hist


def main(argv: list[str] | None = None) -> int:
    from lib.utils import save_results, seed_everything

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in dataclasses.fields(DecoderFTConfig):
        if f.type == "bool":
            parser.add_argument(f"--{f.name}", action="store_true")
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    parser.add_argument("--autoencoder", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--out", type=Path, default=FT_DECODER)
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parents[2] / "results" / "latent"
                        / "decoder_ft.json")  # fmt: skip
    parser.add_argument("--n-eval", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    args = vars(parser.parse_args(argv))
    base, out, results, n_eval, threads = (args.pop(k) for k in ("autoencoder", "out", "results", "n_eval", "threads"))
    config = DecoderFTConfig(**args)
    seed_everything(config.seed, threads=threads)
    trained = load_autoencoder(base)
    before = evaluate_autoencoder(trained, n_eval)
    hist = finetune_decoder(trained.model, config)
    after = evaluate_autoencoder(trained, n_eval)
    command = "python -m lib.latent.decoder_ft " + " ".join(sys.argv[1:] if argv is None else argv)
    figures = {"config": dataclasses.asdict(config), "train_seconds": hist.seconds,
               "final_mse_mean_last_10": hist.last("loss", 10), "autoencoder": base.name,
               "autoencoder_sha256": sha256(base), "before": before, "after": after}  # fmt: skip
    state = {k: v for k, v in trained.model.state_dict().items() if k.startswith("decoder.")}
    path = save_checkpoint(out, state, command=command, seed=config.seed, config=dataclasses.asdict(config),
                           extra={"autoencoder_sha256": sha256(base), "results": figures})  # fmt: skip
    save_results(results, figures, command=command)
    print(f"saved {path} and {results}: PSNR {before['psnr_test']:.2f} -> {after['psnr_test']:.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
