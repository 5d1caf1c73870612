"""Flows on scikit-learn's 8x8 digits: a small Glow trained by maximum likelihood on dequantised pixels and a
flow-matching model; test bits/dim (the flow exactly, flow matching through the ODE likelihood) and the
classifier-Frechet distance of samples; shipped checkpoints.

Chapter: "Normalizing flows, continuous flows and flow matching" (``chapters/flows.ipynb``).

    python -m lib.flows.digits

writes ``weights/flows_digits_glow.safetensors``, ``weights/flows_digits_fm.safetensors`` and, after one reflow of
the flow-matching model, ``weights/flows_digits_fm_reflow.safetensors`` (with provenance sidecars), and
``results/flows/digits.json`` (bits/dim, Frechet distances, the few-step table before and after the reflow).

    python -m lib.flows.digits --diffusion-bpd

instead writes ``results/flows/diffusion_bpd.json``: the test bits/dim of the diffusion chapter's shipped digits
model (``weights/digits_vp_mlp.safetensors``) through the core's PF-ODE likelihood, on the same 450 test images and
with the same solver tolerances as flow matching's figure, so the two chapters' models can be set side by side.

Glossary
--------
w            bin width of the pixel grid: 17 grey levels on [-1, 1], ``w = 1/8``
dequantise   ``y = x + w u``, ``u ~ U(-1/2, 1/2)`` per pixel (the diffusion core's ``uniform_dequantize``)
bits/dim     ``-(log p(y) / 64 + log w) / ln 2``, an upper bound on the discrete code length
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from lib.checkpoint import WEIGHTS_DIR, load_checkpoint, save_checkpoint
from lib.data.digits import load_digits
from lib.diffusion.likelihood import bits_per_dim, categorical_pixel_bits_per_dim, uniform_dequantize
from lib.flows.likelihood import velocity_log_prob
from lib.flows.matching import cfm_loss, euler_sample, ode_sample, reflow
from lib.flows.model import GlowConfig, NormalizingFlow, build_glow
from lib.nn.unet import MLPConfig, TimeMLP
from lib.train import train
from lib.utils import seed_everything

BIN_WIDTH = 1.0 / 8.0
"""Pixel grid spacing of ``lib.data.digits`` (0..16 mapped to [-1, 1])."""
D = 64
LIKELIHOOD_TOL = 1e-4
"""Relative and absolute tolerance of the dopri5 likelihood solves (flow matching's and the diffusion model's)."""


@dataclass(frozen=True)
class DigitsFlowConfig:
    """Training of both digits models."""

    glow: GlowConfig = GlowConfig(checker=2, steps=4, hidden=32)
    """Architecture of the flow."""
    velocity: MLPConfig = MLPConfig(dim=64, hidden=256, depth=3, time_dim=64, image_shape=(1, 8, 8))
    """Velocity network of flow matching."""
    glow_steps: int = 800
    """Maximum-likelihood steps of the flow."""
    fm_steps: int = 3000
    """Flow-matching steps."""
    batch: int = 128
    """Batch size."""
    lr: float = 1e-3
    """Adam learning rate (cosine decay)."""
    seed: int = 0
    """Seed."""


def _batches(x: torch.Tensor, batch: int, generator: torch.Generator, dequantize: bool):
    def fn(step: int) -> torch.Tensor:
        b = x[torch.randint(0, len(x), (batch,), generator=generator)]
        return uniform_dequantize(b, BIN_WIDTH, generator) if dequantize else b

    return fn


def train_glow(c: DigitsFlowConfig, steps: int | None = None) -> tuple[NormalizingFlow, float]:
    """Maximum likelihood on dequantised training digits; returns ``(model, seconds)``."""
    x = load_digits("train").x
    seed_everything(c.seed, threads=None)
    model = build_glow(c.glow)
    steps = steps or c.glow_steps
    opt = torch.optim.Adam(model.parameters(), lr=c.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(c.seed)
    hist = train(model, lambda m, b: -m.log_prob(b).mean(), _batches(x, c.batch, g, True), steps, optimizer=opt,
                 scheduler=sched, grad_clip=50.0, log_every=max(1, steps // 50), desc="digits glow")  # fmt: skip
    model.eval()
    return model, hist.seconds


def train_fm(c: DigitsFlowConfig, steps: int | None = None) -> tuple[TimeMLP, float]:
    """Flow matching on dequantised training digits; returns ``(model, seconds)``."""
    x = load_digits("train").x
    seed_everything(c.seed, threads=None)
    model = TimeMLP(c.velocity)
    steps = steps or c.fm_steps
    opt = torch.optim.Adam(model.parameters(), lr=c.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(c.seed)
    hist = train(model, lambda m, b: cfm_loss(m, b, generator=g), _batches(x, c.batch, g, True), steps,
                 optimizer=opt, scheduler=sched, log_every=max(1, steps // 50), desc="digits fm")  # fmt: skip
    model.eval()
    return model, hist.seconds


def glow_bits_per_dim(model: NormalizingFlow, x: torch.Tensor, generator: torch.Generator) -> float:
    """Test bits/dim of the flow on dequantised ``x`` (one dequantisation draw)."""
    with torch.no_grad():
        logp = model.log_prob(uniform_dequantize(x, BIN_WIDTH, generator))
    return float(bits_per_dim(logp, D, BIN_WIDTH).mean())


def fm_bits_per_dim(model: torch.nn.Module, x: torch.Tensor, generator: torch.Generator,
                    divergence: str = "exact") -> tuple[float, int]:  # fmt: skip
    """Test bits/dim of flow matching through the ODE likelihood on dequantised ``x``; ``(bits/dim, nfe)``."""
    res = velocity_log_prob(model, uniform_dequantize(x, BIN_WIDTH, generator), rtol=LIKELIHOOD_TOL,
                            atol=LIKELIHOOD_TOL, divergence=divergence, generator=generator)  # fmt: skip
    return float(bits_per_dim(res.logp, D, BIN_WIDTH).mean()), int(res.nfe)


def sample_quality(glow: NormalizingFlow, fm: torch.nn.Module, n: int, generator: torch.Generator,
                   euler_steps: tuple[int, ...] = (1, 2, 4, 8, 100)) -> dict[str, float]:  # fmt: skip
    """Classifier-Frechet distance to the test split of ``n`` samples: the flow (temperature 1 and 0.8), flow
    matching with the adaptive solver and with Euler steps, and the train split itself (the floor)."""
    from lib.metrics import classifier_frechet_distance

    test = load_digits("test").x
    out = {"train split": classifier_frechet_distance(load_digits("train").x[:n], test)}
    with torch.no_grad():
        out["glow T=1"] = classifier_frechet_distance(glow.sample(n, generator).clamp(-1, 1), test)
        out["glow T=0.8"] = classifier_frechet_distance(glow.sample(n, generator, 0.8).clamp(-1, 1), test)
    eps = torch.randn(n, 1, 8, 8, generator=generator)
    out["fm ode"] = classifier_frechet_distance(ode_sample(fm, eps, rtol=1e-4, atol=1e-4).x0, test)
    for k in euler_steps:
        out[f"fm euler {k}"] = classifier_frechet_distance(euler_sample(fm, eps, k), test)
    return out


def reflow_digits(teacher: torch.nn.Module, c: DigitsFlowConfig, pairs: int, steps: int,
                  generator: torch.Generator) -> tuple[torch.nn.Module, dict]:  # fmt: skip
    """One reflow of the digits flow-matching model (:func:`lib.flows.matching.reflow` in 64 dimensions, at ``c``'s
    batch and learning rate, the teacher solved at tolerance 1e-4). Returns ``(student, info)``."""
    student, info = reflow(teacher, pairs, (1, 8, 8), steps, c.batch, c.lr, generator, rtol=1e-4, atol=1e-4,
                           desc="digits reflow")  # fmt: skip
    return student, {"pairs": pairs, "steps": steps, **info}


DIFFUSION_T_MIN_GRID = (1e-3, 1e-2)
"""Candidate ``t_min`` of the diffusion model's PF-ODE likelihood: the diffusion chapter's grid."""


def diffusion_bits_per_dim(model: torch.nn.Module, sde, x: torch.Tensor, t_min: float, generator: torch.Generator,
                           divergence: str = "exact") -> tuple[float, int]:  # fmt: skip
    """Test bits/dim of an eps-predicting diffusion model on dequantised ``x`` through its PF-ODE likelihood
    (``lib.diffusion.likelihood.pf_ode_likelihood``, float64, dopri5 at the tolerances of :func:`fm_bits_per_dim`),
    the density being that of ``x_{t_min}``; returns ``(bits/dim, nfe)``."""
    import copy

    from lib.diffusion.likelihood import pf_ode_likelihood
    from lib.diffusion.predictions import Denoiser

    den = Denoiser(copy.deepcopy(model).double().eval(), "eps")
    y = uniform_dequantize(x.double(), BIN_WIDTH, generator)
    with torch.no_grad():
        res = pf_ode_likelihood(den, sde, y, t_min=t_min, divergence=divergence, rtol=LIKELIHOOD_TOL,
                                atol=LIKELIHOOD_TOL, generator=generator)  # fmt: skip
    return float(bits_per_dim(res.logp, D, BIN_WIDTH).mean()), int(res.nfe)


def diffusion_bpd_study(select: int = 100, draws: int = 5, seed: int = 0, n_test: int | None = None) -> dict:
    """The diffusion chapter's protocol on the flows chapter's test set: ``t_min`` chosen from
    :data:`DIFFUSION_T_MIN_GRID` on ``select`` training images (exact divergence), then the test bits/dim with the
    exact divergence (one dequantisation draw) and with one Hutchinson probe over ``draws`` dequantisation draws
    (their spread). ``n_test`` limits the test images (default: all 450)."""
    from lib.diffusion.train_digits import DEFAULT_CHECKPOINT, load_digits_diffusion

    if not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be a positive int, got {draws!r}")
    trained = load_digits_diffusion()
    sde = trained.config.sde
    g = torch.Generator().manual_seed(300 + seed)
    train_x, test_x = load_digits("train").x, load_digits("test").x[:n_test]
    x_select = train_x[torch.randperm(len(train_x), generator=g)[:select]]
    t0 = time.perf_counter()
    selection = {str(t): diffusion_bits_per_dim(trained.model, sde, x_select, t, g)[0] for t in DIFFUSION_T_MIN_GRID}
    t_min = min(DIFFUSION_T_MIN_GRID, key=lambda t: selection[str(t)])
    exact, nfe = diffusion_bits_per_dim(trained.model, sde, test_x, t_min, g)
    hutch = [diffusion_bits_per_dim(trained.model, sde, test_x, t_min, g, "hutchinson")[0] for _ in range(draws)]
    return {"checkpoint": DEFAULT_CHECKPOINT.name, "checkpoint_command": trained.metadata["provenance"]["command"],
            "selection_images": select, "selection_bits_per_dim": selection, "t_min": t_min, "test_images": len(test_x),
            "bits_per_dim": exact, "nfe": nfe, "divergence": "exact", "rtol": LIKELIHOOD_TOL, "atol": LIKELIHOOD_TOL,
            "hutchinson_draws": hutch, "seconds": time.perf_counter() - t0}  # fmt: skip


def load_digits_flows(reflowed: bool = False) -> tuple[NormalizingFlow, TimeMLP, dict]:
    """The shipped checkpoints (sha256 verified): ``(glow, fm, metadata of the flow's checkpoint)``; with
    ``reflowed``, ``fm`` is the reflowed student."""
    state, meta = load_checkpoint(WEIGHTS_DIR / "flows_digits_glow.safetensors")
    c = meta["config"]
    glow = build_glow(GlowConfig(**c["glow"]))
    glow.load_state_dict(state)
    name = "flows_digits_fm_reflow" if reflowed else "flows_digits_fm"
    state_fm, meta_fm = load_checkpoint(WEIGHTS_DIR / f"{name}.safetensors")
    v = dict(meta_fm["config"]["velocity"])
    v["image_shape"] = tuple(v["image_shape"])
    fm = TimeMLP(MLPConfig(**v))
    fm.load_state_dict(state_fm)
    return glow.eval(), fm.eval(), meta


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from lib.utils import save_results

    p = argparse.ArgumentParser(description="train the flows chapter's digits models and record their figures")
    p.add_argument("--glow-steps", type=int, default=DigitsFlowConfig.glow_steps)
    p.add_argument("--fm-steps", type=int, default=DigitsFlowConfig.fm_steps)
    p.add_argument("--reflow-pairs", type=int, default=4000, help="teacher ODE pairs of the reflow (0: no reflow)")
    p.add_argument("--reflow-steps", type=int, default=1500, help="training steps of the reflowed student")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--diffusion-bpd",
        action="store_true",
        help="instead: test bits/dim of the diffusion chapter's digits checkpoint (PF-ODE likelihood)",
    )
    p.add_argument("--out", help="results file (default results/flows/digits.json, or diffusion_bpd.json)")
    args = p.parse_args(argv)
    seed_everything(args.seed, threads=args.threads)
    if args.diffusion_bpd:
        command = "python -m lib.flows.digits " + " ".join(sys.argv[1:] if argv is None else argv)
        res = diffusion_bpd_study(seed=args.seed)
        save_results(args.out or "results/flows/diffusion_bpd.json", res, command=command)
        print(res)
        return 0
    args.out = args.out or "results/flows/digits.json"
    c = DigitsFlowConfig(glow_steps=args.glow_steps, fm_steps=args.fm_steps, seed=args.seed)
    command = "python -m lib.flows.digits " + " ".join(sys.argv[1:] if argv is None else argv)
    cfg = dataclasses.asdict(c)
    glow, glow_s = train_glow(c)
    save_checkpoint(WEIGHTS_DIR / "flows_digits_glow.safetensors", glow.state_dict(), command=command, seed=c.seed,
                    config=cfg, extra={"train_seconds": glow_s})  # fmt: skip
    fm, fm_s = train_fm(c)
    save_checkpoint(WEIGHTS_DIR / "flows_digits_fm.safetensors", fm.state_dict(), command=command, seed=c.seed,
                    config=cfg, extra={"train_seconds": fm_s})  # fmt: skip
    g = torch.Generator().manual_seed(100 + c.seed)
    train_x, test_x = load_digits("train").x, load_digits("test").x
    t0 = time.perf_counter()
    fm_bpd, nfe = fm_bits_per_dim(fm, test_x, g, divergence="hutchinson")
    results = {
        "glow_bits_per_dim": glow_bits_per_dim(glow, test_x, g),
        "fm_bits_per_dim": fm_bpd, "fm_likelihood_nfe": nfe, "fm_likelihood_seconds": time.perf_counter() - t0,
        "fm_divergence": "hutchinson (one Rademacher probe per solve)",
        "categorical_bits_per_dim": categorical_pixel_bits_per_dim(train_x, test_x),
        "glow_train_seconds": glow_s, "fm_train_seconds": fm_s,
        "frechet": sample_quality(glow, fm, 450, g), "config": cfg,
    }  # fmt: skip
    save_results(args.out, results, command=command)
    if args.reflow_pairs > 0:
        student, info = reflow_digits(fm, c, args.reflow_pairs, args.reflow_steps, g)
        save_checkpoint(WEIGHTS_DIR / "flows_digits_fm_reflow.safetensors", student.state_dict(), command=command,
                        seed=c.seed, config=cfg, extra=info)  # fmt: skip
        same = {k: sample_quality(glow, m, 450, torch.Generator().manual_seed(200 + c.seed))  # the same noise
                for k, m in (("before", fm), ("after", student))}  # fmt: skip
        results["reflow"] = {**info, **{k: {n: v for n, v in q.items() if n.startswith("fm")} for k, q in same.items()}}
        save_results(args.out, results, command=command)
    print(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
