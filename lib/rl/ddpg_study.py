"""The DDPG chapter's Pendulum-v1 study: DDPG, TD3, TD3's fixes one at a time, OU vs Gaussian noise.

Chapter: "DDPG, the deterministic policy gradient" (``chapters/ddpg.ipynb``).
Run: ``python -m lib.rl.ddpg_study --seeds 0 1 2 --workers 2 --out results/rl/ddpg_study.json``
(every variant, 3 seeds, 15,000 steps each). The committed file was made in three invocations on a
shared 2-core machine: DDPG and TD3 for 15,000 steps, then (``--resume --total-steps 7500``) the three
TD3 fixes alone and OU noise, then the time limit read as terminal, each for 7,500 steps; each run's
``config`` records its budget and the file's ``commands`` lists every invocation. Each run records
its greedy evaluation curve (20 episodes every 2,500 steps), the critic's overestimation at each
evaluation (:func:`lib.rl.ddpg.q_overestimation` on 5 greedy episodes), and its wall and CPU time. The
file is rewritten after every finished run, and ``--resume`` skips the runs already in it, so an
interrupted study can be continued.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

from lib.rl.ddpg import DDPGConfig, TD3Config, train_ddpg
from lib.utils import load_results, save_results

BIAS_EPISODES = 5
"""Greedy episodes per overestimation measurement."""

VARIANTS: dict[str, DDPGConfig] = {
    "DDPG": DDPGConfig(),
    "TD3": TD3Config(),
    "DDPG, OU noise": DDPGConfig(noise="ou", noise_sigma=0.2),
    "DDPG + clipped double Q": DDPGConfig(twin_critics=True),
    "DDPG + target smoothing": DDPGConfig(target_noise=0.2),
    "DDPG + delayed actor": DDPGConfig(policy_delay=2),
    "DDPG, time limit as terminal": DDPGConfig(bootstrap_truncated=False),
}
"""Variant name -> config (seed and budget are set per run). "DDPG" uses Gaussian noise sigma = 0.1 (TD3's
choice); "DDPG, OU noise" uses the DDPG paper's theta = 0.15, sigma = 0.2 (stationary std 0.38);
"DDPG, time limit as terminal" is the truncation-as-termination bug, on purpose."""


def run_one(name: str, seed: int, total_steps: int = 15_000) -> dict:
    """Train one (variant, seed) and summarise it as a JSON-able dict."""
    if name not in VARIANTS:
        raise ValueError(f"name must be one of {list(VARIANTS)}, got {name!r}")
    cfg = dataclasses.replace(VARIANTS[name], seed=seed, total_steps=total_steps, eval_bias_episodes=BIAS_EPISODES)
    r = train_ddpg(cfg)
    curve = " ".join(f"{v:.0f}" for v in r.eval_returns)
    timing = f"({r.seconds:.0f} s wall, {r.cpu_seconds:.0f} s cpu)"
    print(f"{name:26s} seed {seed}: {curve}  bias {r.eval_bias[-1]['bias']:+.1f}  {timing}", flush=True)
    return {
        "seed": seed,
        "config": dataclasses.asdict(cfg),
        "eval_steps": r.eval_steps,
        "eval_returns": r.eval_returns,
        "eval_bias": r.eval_bias,
        "train_episodes": r.episodes,
        "updates": r.updates,
        "seconds": r.seconds,
        "cpu_seconds": r.cpu_seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="*", default=None, help=f"subset of {list(VARIANTS)}")
    parser.add_argument("--total-steps", type=int, default=15_000)
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (one run each)")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in --out")
    parser.add_argument("--out", default="results/rl/ddpg_study.json")
    args = parser.parse_args(argv)
    names = args.variants or list(VARIANTS)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    command = "python -m lib.rl.ddpg_study " + shlex.join(argv if argv is not None else sys.argv[1:])
    out: dict = {"env_id": "Pendulum-v1", "commands": [], "runs": {}}
    if args.resume and Path(args.out).exists():
        payload = load_results(args.out)
        out = payload["results"]
        out.setdefault("commands", [payload["provenance"]["command"]])
    out["commands"].append(command)  # every invocation that wrote runs into this file, in order
    done = {(n, r["seed"]) for n, runs in out["runs"].items() for r in runs}
    jobs = [(n, s) for n in names for s in args.seeds if (n, s) not in done]

    def record(name: str, summary: dict) -> None:
        out["runs"].setdefault(name, []).append(summary)
        out["runs"][name].sort(key=lambda r: r["seed"])
        save_results(args.out, out, command=command)

    if args.workers == 1:
        for n, s in jobs:
            record(n, run_one(n, s, args.total_steps))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=args.workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(run_one, n, s, args.total_steps): n for n, s in jobs}
            for f in as_completed(futures):
                record(futures[f], f.result())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
