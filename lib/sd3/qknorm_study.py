"""QK-normalisation: attention-logit growth at a high learning rate in bf16, with and without RMSNorm on q and k.

Chapter: "Stable Diffusion 3" (``chapters/sd3.ipynb``). Esser et al. 2024, section 5.3.2: at high resolution the
attention logits of large MMDiTs grow until the attention entropy collapses and bf16 training diverges; RMSNorm on
queries and keys (Dehghani et al. 2023, ViT-22B) bounds them. Here the same small MMDiT is trained with rectified flow
(velocity loss, logit-normal times, through :class:`lib.diffusion.loss.DiffusionLoss` and :func:`lib.train.train`)
on a synthetic text-to-latent task, under bf16 autocast, and the largest logit ``max q . k / sqrt(d_head)`` over all
blocks, heads and token pairs is logged at every step.

Command: ``python -m lib.sd3.qknorm_study [--lrs 1e-3 1e-2 3e-2] [--seeds 0 1 2] [--steps 300] [--fp32-control]`` ->
``results/sd3/qknorm.json``.

Glossary
--------
x0         ``(n, 4, 8, 8)`` latents; patch ``j`` a fixed random linear map of caption token ``j mod L`` (plus noise)
context    ``(n, L, context_dim)`` random caption tokens
max_logit  per logged step, the largest attention logit of the step's forward pass (bf16 activations)
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass

import torch

from lib.diffusion.loss import DiffusionLoss
from lib.diffusion.schedules import RectifiedFlow
from lib.diffusion.timesteps import TimeSampler
from lib.nn.mmdit import MMDiT, MMDiTConfig, unpatchify
from lib.train import train


@dataclass(frozen=True)
class QKNormConfig:
    """One training run of the study."""

    qk_norm: bool = False
    """RMSNorm on per-head queries and keys."""
    lr: float = 1e-2
    """Adam learning rate (high on purpose)."""
    steps: int = 300
    """Optimisation steps."""
    batch_size: int = 32
    """Examples per step."""
    n_data: int = 512
    """Size of the synthetic data set."""
    context_len: int = 8
    """Caption tokens ``L``."""
    context_dim: int = 16
    """Caption token width."""
    d_model: int = 64
    """MMDiT width."""
    depth: int = 3
    """MMDiT blocks."""
    heads: int = 4
    """Attention heads."""
    bf16: bool = True
    """Train under ``torch.autocast(dtype=torch.bfloat16)``."""
    seed: int = 0
    """Seed of the data, the initialisation and the loss's draws."""

    def __post_init__(self) -> None:
        if not self.lr > 0 or self.steps < 1 or self.batch_size < 1 or self.n_data < self.batch_size:
            raise ValueError(f"need lr > 0, steps >= 1, 1 <= batch_size <= n_data, got {self}")


def synthetic_task(config: QKNormConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0 (n, 4, 8, 8), context (n, L, context_dim))``: latent patch ``j`` (of the 4x4 grid of 2x2 patches) is
    ``A context[j mod L]`` for one fixed random ``A``, plus noise 0.1: the network must route each caption token to
    its patches through the joint attention."""
    g = torch.Generator().manual_seed(10_000 + config.seed)
    n, L, c = config.n_data, config.context_len, config.context_dim
    context = torch.randn(n, L, c, generator=g)
    A = torch.randn(c, 2 * 2 * 4, generator=g) / math.sqrt(c)
    patches = context[:, torch.arange(16) % L] @ A  # (n, 16 patches, 2 * 2 * 4 values)
    return unpatchify(patches, 2, 4, 4) + 0.1 * torch.randn(n, 4, 8, 8, generator=g), context


def run(config: QKNormConfig) -> dict:
    """Train once; returns the config, per-step ``loss`` and ``max_logit``, and the seconds taken."""
    torch.manual_seed(config.seed)
    model = MMDiT(
        MMDiTConfig(in_channels=4, input_size=8, patch_size=2, d_model=config.d_model, depth=config.depth,
                    heads=config.heads, context_dim=config.context_dim, qk_norm=config.qk_norm)
    )  # fmt: skip
    for blk in model.blocks:
        blk.record_logits = True
    x0, context = synthetic_task(config)
    g = torch.Generator().manual_seed(config.seed)
    base = DiffusionLoss(RectifiedFlow(), "velocity", t_sampler=TimeSampler("logit_normal"), generator=g)

    def loss_fn(m: MMDiT, batch: dict) -> dict:
        loss = base(m, batch)
        return {"loss": loss, "max_logit": max(blk.max_logit for blk in m.blocks)}

    def data(step: int) -> dict:
        idx = torch.randint(0, config.n_data, (config.batch_size,), generator=g)
        return {"x": x0[idx], "context": context[idx]}

    hist = train(model, loss_fn, data, config.steps, lr=config.lr,
                 autocast_dtype=torch.bfloat16 if config.bf16 else None, stop_on_nan=True, desc="qknorm")  # fmt: skip
    loss, logit = hist.metrics["loss"], hist.metrics["max_logit"]
    return {"config": asdict(config), "loss": [round(v, 4) for v in loss], "max_logit": [round(v, 3) for v in logit],
            "peak_logit": max(logit), "final_loss": sum(loss[-20:]) / len(loss[-20:]),
            "finite": all(math.isfinite(v) for v in loss), "seconds": hist.seconds}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``python -m lib.sd3.qknorm_study [--lrs ...] [--seeds ...] [--steps N] [--out PATH]``."""
    import argparse

    from lib.utils import save_results, seed_everything

    p = argparse.ArgumentParser(description="QK-norm study: max attention logit with and without QK RMSNorm")
    p.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 1e-2, 3e-2])
    p.add_argument("--fp32-control", action="store_true", help="also train at the largest lr without autocast")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=QKNormConfig.steps)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="results/sd3/qknorm.json")
    args = p.parse_args(argv)
    seed_everything(0, threads=args.threads)
    runs = []
    grid = [(lr, True) for lr in args.lrs] + ([(max(args.lrs), False)] if args.fp32_control else [])
    for lr, bf16 in grid:
        for seed in args.seeds:
            for qk in (False, True):
                r = run(QKNormConfig(qk_norm=qk, lr=lr, steps=args.steps, seed=seed, bf16=bf16))
                runs.append(r)
                ml = r["max_logit"]
                print(f"lr={lr:g} bf16={bf16} seed={seed} qk_norm={qk}: max logit {ml[0]:.1f} -> {max(ml):.1f} (peak), "
                      f"final loss {r['loss'][-1]:.3f}, {r['seconds']:.0f} s", flush=True)  # fmt: skip
    command = "python -m lib.sd3.qknorm_study " + " ".join(sys.argv[1:] if argv is None else argv)
    save_results(args.out, {"runs": runs}, command)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
