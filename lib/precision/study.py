"""The chapter's precision study: every comparison ("arm") of the digits experiment, over several seeds.

Each arm is one :class:`~lib.precision.experiment.DigitsRunConfig` and the precision modes it compares:

``main``        Adam (torch defaults, eps 1e-8): FP32, pure FP16, FP16 + masters + dynamic scaling,
                BF16 autocast, FP16 + masters without scaling;
``adam_eps``    the same with Adam's ``eps = 1e-4``, which FP16 can represent: is ``eps`` the cause?
``sgd``         momentum SGD (no ``eps``, no squared gradients): does pure FP16 still fail?
``underflow``   the loss multiplied by ``2**-12``: gradients in FP16's underflow zone (loss scaling's job);
``swamping``    fine-tuning the trained FP32 ``main`` model with SGD at a small learning rate: updates
                below half an FP16 ulp of the weights (the master weights' job); ``fp16_no_master``
                keeps FP32 optimizer state but no master copy (is the lost update the cause?);
``fp8``         emulated FP8 products with delayed per-tensor scaling, and without scaling;
``fp8_underflow`` the same with the loss multiplied by ``2**-12`` (per-tensor scaling's job).

Usage (writes a results file with provenance through :func:`lib.utils.save_results`)::

    python -m lib.precision.study --seeds 0 1 2 --out results/mixed_precision/study.json
    python -m lib.precision.study --seeds 0 1 2 --arms swamping --out results/mixed_precision/swamping.json

(the second adds the ``fp16_no_master`` ablation to the swamping arm; its other modes reproduce the
first file's bit for bit).

Chapter: "Mixed precision training" (``chapters/mixed_precision.ipynb``), which runs seed 0 of some
arms live and reads the three-seed figures from the committed file.

Glossary
--------
final_loss        FP32 training loss of the final weights (without the loss weight)
v_zero_fraction   fraction of Adam's second-moment entries that are exactly 0 at the end
start_loss        loss of the starting point (``swamping``: the trained ``main`` FP32 model)
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from lib.precision.experiment import DigitsRunConfig, PrecisionRun, train_digits

ARMS: dict[str, tuple[DigitsRunConfig, tuple[str, ...]]] = {
    "main": (DigitsRunConfig(), ("fp32", "fp16", "fp16_master", "bf16", "fp16_master_unscaled")),
    "adam_eps": (DigitsRunConfig(eps=1e-4), ("fp32", "fp16", "fp16_master")),
    "sgd": (DigitsRunConfig(optimizer="sgd", lr=0.1), ("fp32", "fp16", "fp16_master")),
    "underflow": (DigitsRunConfig(loss_weight=2.0**-12), ("fp32", "fp16_master", "fp16_master_unscaled", "bf16")),
    "swamping": (
        DigitsRunConfig(optimizer="sgd", lr=3e-3),
        ("fp32", "fp16", "fp16_master_unscaled", "fp16_no_master"),
    ),
    "fp8": (DigitsRunConfig(), ("fp32", "fp8", "fp8_unscaled")),
    "fp8_underflow": (DigitsRunConfig(loss_weight=2.0**-12), ("fp32", "fp8", "fp8_unscaled")),
}
"""Arm name -> (configuration without its seed, modes compared). ``swamping`` starts from ``main``'s FP32 model."""


def v_zero_fraction(optimizer: torch.optim.Optimizer | None) -> float | None:
    """Fraction of Adam's ``exp_avg_sq`` entries that are exactly zero (``None`` for other optimizers)."""
    if not isinstance(optimizer, torch.optim.Adam):
        return None
    v = [s["exp_avg_sq"].flatten() for s in optimizer.state.values() if "exp_avg_sq" in s]
    if not v:
        return None
    return float((torch.cat(v) == 0).float().mean())


def run_arm(
    arm: str,
    x: torch.Tensor,
    y: torch.Tensor,
    seed: int = 0,
    init: dict[str, torch.Tensor] | None = None,
    modes: tuple[str, ...] | None = None,
) -> dict[str, PrecisionRun]:
    """Train every mode of arm ``arm`` (a key of :data:`ARMS`) with seed ``seed``; returns mode -> run.

    ``init`` (an FP32 ``state_dict``) is the starting point; the ``swamping`` arm requires it (the trained
    FP32 model of the ``main`` arm with the same seed). ``modes`` restricts the modes (default: all of the arm).
    """
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {tuple(ARMS)}, got {arm!r}")
    if arm == "swamping" and init is None:
        raise ValueError("arm 'swamping' needs init: the state_dict of the main arm's trained FP32 model")
    cfg, arm_modes = ARMS[arm]
    cfg = DigitsRunConfig(**{**asdict(cfg), "seed": seed})
    return {m: train_digits(m, x, y, cfg, init=init) for m in (modes or arm_modes)}


def summarize(run: PrecisionRun) -> dict[str, float | int | None]:
    """The JSON record of one run."""
    loss = run.final_loss
    return {
        "final_loss": loss if math.isfinite(loss) else None,
        "steps_run": len(run.history.steps),
        "skipped_steps": run.skipped_steps,
        "v_zero_fraction": v_zero_fraction(run.optimizer),
    }


def run_study(x: torch.Tensor, y: torch.Tensor, seeds: list[int], arms: list[str] | None = None) -> dict:
    """Every arm (default: all of :data:`ARMS`) for every seed; the ``results`` payload of the study file."""
    arms = arms or list(ARMS)
    out: dict = {"seeds": list(seeds), "arms": {}}
    for arm in arms:
        cfg, modes = ARMS[arm]
        out["arms"][arm] = {"config": asdict(cfg), "modes": list(modes), "runs": {m: [] for m in modes}}
    for seed in seeds:
        main = run_arm("main", x, y, seed, modes=None if "main" in arms else ("fp32",))
        out_runs: dict[str, dict[str, PrecisionRun]] = {}
        for arm in arms:
            runs = main if arm == "main" else None
            if arm in ("fp8", "fp8_underflow") and runs is None:  # reuse FP32 runs already trained
                fp32 = main["fp32"] if arm == "fp8" else out_runs.get("underflow", {}).get("fp32")
                if fp32 is not None:
                    runs = {"fp32": fp32, **run_arm(arm, x, y, seed, modes=("fp8", "fp8_unscaled"))}
            if runs is None:
                init = main["fp32"].model.state_dict() if arm == "swamping" else None
                runs = run_arm(arm, x, y, seed, init=init)
            out_runs[arm] = runs
            for m, r in runs.items():
                rec = {"seed": seed, **summarize(r)}
                if arm == "swamping":
                    rec["start_loss"] = main["fp32"].final_loss
                out["arms"][arm]["runs"][m].append(rec)
            print(f"seed {seed} {arm:10}", {m: round(r.final_loss, 5) for m, r in runs.items()}, flush=True)
    return out


def main(argv: list[str] | None = None) -> Path:
    """Command-line entry point (see the module docstring)."""
    from lib.data.digits import load_digits
    from lib.utils import save_results, seed_everything

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", choices=tuple(ARMS), default=None)
    p.add_argument("--out", default="results/mixed_precision/study.json")
    args = p.parse_args(argv)
    seed_everything(0, threads=1)
    data = load_digits("train")
    results = run_study(data.x, data.y, args.seeds, args.arms)
    command = "python -m lib.precision.study " + " ".join(argv if argv is not None else sys.argv[1:])
    return save_results(args.out, results, command=command)


if __name__ == "__main__":
    main()


def final_losses(results: dict, arm: str, mode: str) -> list[float]:
    """Final losses of ``mode`` in ``arm`` of a study payload (``load_results(path)["results"]``), one per seed
    (``nan`` for a run that diverged)."""
    if arm not in results["arms"] or mode not in results["arms"][arm]["runs"]:
        raise ValueError(f"no runs of mode {mode!r} in arm {arm!r}")
    return [math.nan if r["final_loss"] is None else r["final_loss"] for r in results["arms"][arm]["runs"][mode]]
