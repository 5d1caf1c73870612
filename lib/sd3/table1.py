"""SD3's Table 1 at toy scale: one small class-conditional MMDiT (a DiT: no text stream) trained on the 8x8 digits
with each formulation of :mod:`lib.diffusion.rectified`, several seeds, evaluated with one sampler.

Chapter: "Stable Diffusion 3" (``chapters/sd3.ipynb``). Esser et al. 2024, section 5.1 and Table 1 rank 61
formulations by FID and CLIP score over sampler step counts; rf/lognorm(0.00, 1.00) ranks first on average. Here every
formulation trains the same :class:`lib.nn.mmdit.MMDiT` through the core's :class:`~lib.diffusion.loss.DiffusionLoss`
and :func:`lib.train.train`; all are sampled by the same Euler solver of the probability-flow ODE
(:func:`lib.diffusion.samplers.euler`, uniform grid in each schedule's own ``t``) at 5 and 25 steps, and scored by the
digits classifier: Frechet distance of its features to the test split, and accuracy on the requested labels.
The digits stand in for the latent-diffusion chapter's latents, which are slower to train on.

Command: ``python -m lib.sd3.table1 [--kinds rf/uniform rf/lognorm ...] [--seeds 0 1 2] [--steps 1000]`` ->
``results/sd3/table1.json``.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import asdict, dataclass

import torch

from lib.diffusion.predictions import Denoiser
from lib.diffusion.rectified import formulation
from lib.diffusion.samplers import euler
from lib.nn.mmdit import MMDiT, MMDiTConfig
from lib.train import train

KINDS = ("rf/uniform", "rf/lognorm", "rf/mode", "rf/cosmap", "eps/linear", "v/cosine")
"""The formulations the issue asks for, in the paper's naming."""


@dataclass(frozen=True)
class Table1Config:
    """One training run: a formulation, a seed, and the shared model and training settings."""

    kind: str = "rf/lognorm"
    """A name of :data:`lib.diffusion.rectified.FORMULATIONS` (default parameters)."""
    seed: int = 0
    """Seed of initialisation, batches, times and noise."""
    steps: int = 1000
    """Optimisation steps (Adam, cosine-decayed learning rate)."""
    batch_size: int = 128
    """Minibatch size."""
    lr: float = 1e-3
    """Peak learning rate."""
    d_model: int = 64
    """MMDiT width."""
    depth: int = 3
    """MMDiT blocks."""
    heads: int = 4
    """Attention heads."""
    patch_size: int = 2
    """Patch side on the 8x8 digits (16 tokens)."""
    n_eval: int = 500
    """Samples per evaluation (labels cycling through 0..9)."""
    eval_steps: tuple[int, ...] = (5, 25)
    """Euler step counts."""
    t_min: float = 1e-3
    """Smallest training and sampling time; sampling starts at ``1 - t_min``."""

    def __post_init__(self) -> None:
        formulation(self.kind)  # raises ValueError for an unknown kind
        if min(self.steps, self.batch_size, self.n_eval) < 1 or not self.eval_steps:
            raise ValueError("steps, batch_size, n_eval must be positive and eval_steps non-empty")


def make_model(config: Table1Config) -> MMDiT:
    """The shared network: ``(B, 1, 8, 8)`` digits, 10 classes (label 10 = none), no text stream."""
    return MMDiT(MMDiTConfig(in_channels=1, input_size=8, patch_size=config.patch_size, d_model=config.d_model,
                             depth=config.depth, heads=config.heads, num_classes=10))  # fmt: skip


def train_formulation(config: Table1Config) -> tuple[MMDiT, dict]:
    """Train one model; returns it (eval mode) and a summary (final loss, seconds)."""
    from lib.data.digits import load_digits

    f = formulation(config.kind, t_min=config.t_min)
    data = load_digits("train")
    torch.manual_seed(config.seed)
    model = make_model(config)
    g = torch.Generator().manual_seed(config.seed)
    loss_fn = f.loss(generator=g)

    def batch(step: int):
        idx = torch.randint(0, len(data), (config.batch_size,), generator=g)
        return data.x[idx], data.y[idx]

    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.steps)
    hist = train(model, loss_fn, batch, config.steps, optimizer=opt, scheduler=sched, log_every=50, desc=f.name)
    return model.eval(), {"name": f.name, "final_loss": hist.last("loss", 5), "seconds": hist.seconds}


@torch.no_grad()
def evaluate(model: MMDiT, config: Table1Config, classifier=None) -> dict:
    """Frechet distance (digits-classifier features, to the test split) and accuracy at each Euler step count."""
    from lib.data.digits import load_digits
    from lib.metrics import classifier_frechet_distance, digits_classifier

    clf = classifier if classifier is not None else digits_classifier().model
    f = formulation(config.kind, t_min=config.t_min)
    y = torch.arange(config.n_eval) % 10
    x_T = torch.randn(config.n_eval, 1, 8, 8, generator=torch.Generator().manual_seed(1000 + config.seed))
    test = load_digits("test").x
    out = {}
    for steps in config.eval_steps:
        den = Denoiser(model, f.prediction, y=y)
        x = euler(den, f.schedule, x_T, steps, t_max=1 - config.t_min, t_min=config.t_min).x
        acc = float((clf(x.clamp(-1, 1)).argmax(1) == y).float().mean())
        out[str(steps)] = {"fd": classifier_frechet_distance(x, test, clf), "accuracy": acc}
    return out


def summarise(runs: list[dict]) -> dict:
    """Per formulation and step count: mean and standard deviation over seeds of FD and accuracy."""
    table: dict[str, dict] = {}
    for r in runs:
        for steps, m in r["eval"].items():
            row = table.setdefault(r["name"], {}).setdefault(steps, {"fd": [], "accuracy": []})
            row["fd"].append(m["fd"])
            row["accuracy"].append(m["accuracy"])
    sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
    return {name: {s: {k: {"mean": statistics.mean(v), "std": sd(v), "values": v} for k, v in row.items()}
                   for s, row in rows.items()} for name, rows in table.items()}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``python -m lib.sd3.table1 [--kinds ...] [--seeds ...] [--steps N] [--n-eval N] [--out PATH]``."""
    import argparse

    from lib.utils import save_results, seed_everything

    p = argparse.ArgumentParser(
        description="SD3 Table 1 at toy scale: formulations x seeds on class-conditional digits"
    )
    p.add_argument("--kinds", nargs="+", default=list(KINDS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=Table1Config.steps)
    p.add_argument("--n-eval", type=int, default=Table1Config.n_eval)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="results/sd3/table1.json")
    args = p.parse_args(argv)
    seed_everything(0, threads=args.threads)
    runs = []
    for seed in args.seeds:
        for kind in args.kinds:
            config = Table1Config(kind=kind, seed=seed, steps=args.steps, n_eval=args.n_eval)
            model, info = train_formulation(config)
            r = {**info, "config": asdict(config), "eval": evaluate(model, config)}
            runs.append(r)
            print(f"{info['name']} seed {seed}: " + ", ".join(f"{s} steps FD {m['fd']:.2f} acc {m['accuracy']:.3f}"
                  for s, m in r["eval"].items()) + f" ({info['seconds']:.0f} s)", flush=True)  # fmt: skip
    command = "python -m lib.sd3.table1 " + " ".join(sys.argv[1:] if argv is None else argv)
    save_results(args.out, {"runs": runs, "table": summarise(runs)}, command)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
