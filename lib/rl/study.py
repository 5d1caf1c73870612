"""The chapter's CartPole study: REINFORCE + baseline vs QAC vs A2C over seeds, one budget.

Chapter: "Actor-critic, from the policy gradient theorem to A2C".
Run: ``python -m lib.rl.study --seeds 0 1 2 --out results/rl/cartpole_study.json`` (9 runs, about
6 minutes on the book's 2-core CPU, measured under load from other jobs). Each run trains for the full
budget (no early stop) and records its evaluation curve; ``solved_at`` is the first evaluation whose
20-episode greedy mean reaches ``target``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from lib.rl.actor_critic import A2CConfig, QACConfig, ReinforceConfig, train_a2c, train_qac, train_reinforce
from lib.utils import save_results

TARGET = 475.0
"""CartPole-v1's reward threshold: the bar is a 20-episode greedy mean of at least this."""

CARTPOLE_A2C = A2CConfig(env_id="CartPole-v1", total_steps=100_000, num_envs=8, n_steps=32, lr=1e-3, gae_lambda=0.95)
"""The chapter's A2C hyperparameters on CartPole-v1 (the other methods share every common field)."""


PENDULUM_A2C = A2CConfig(
    env_id="Pendulum-v1",
    total_steps=300_000,
    num_envs=8,
    n_steps=8,
    gamma=0.9,
    gae_lambda=0.9,
    lr=1e-3,
    eval_every=20_000,
    eval_episodes=10,
)
"""Gaussian-policy A2C on Pendulum-v1 (the bridge to DDPG; reported as measured, no bar)."""


def configs(seed: int, total_steps: int, env_id: str = "CartPole-v1") -> dict:
    """Method name -> (trainer, config) with the same shared fields as :data:`CARTPOLE_A2C`.

    For ``env_id="Pendulum-v1"`` (continuous actions) only A2C, with :data:`PENDULUM_A2C`.
    """
    if env_id == "Pendulum-v1":
        return {"A2C": (train_a2c, dataclasses.replace(PENDULUM_A2C, seed=seed, total_steps=total_steps))}
    if env_id != "CartPole-v1":
        raise ValueError(f"env_id must be 'CartPole-v1' or 'Pendulum-v1', got {env_id!r}")
    common = {f.name: getattr(CARTPOLE_A2C, f.name) for f in dataclasses.fields(QACConfig)}
    common.update(seed=seed, total_steps=total_steps)
    common.pop("normalize_advantages")  # each method keeps its own default (QAC: off)
    return {
        "REINFORCE+baseline": (train_reinforce, ReinforceConfig(**common)),
        "QAC": (train_qac, QACConfig(**common)),
        "A2C": (train_a2c, A2CConfig(**common, gae_lambda=CARTPOLE_A2C.gae_lambda)),
    }


def _binned(episodes: list[tuple[int, float]], edges: list[int]) -> list[float | None]:
    """Mean return of the training episodes that ended in each interval (edges[k-1], edges[k]]."""
    out, lo = [], 0
    for hi in edges:
        returns = [ret for step, ret in episodes if lo < step <= hi]
        out.append(sum(returns) / len(returns) if returns else None)
        lo = hi
    return out


def run_study(
    seeds: list[int], total_steps: int = 100_000, methods: list[str] | None = None, env_id: str = "CartPole-v1"
) -> dict:
    """Train every method for every seed; returns a JSON-able dict of curves and summaries."""
    target = TARGET if env_id == "CartPole-v1" else None
    out: dict = {"env_id": env_id, "target": target, "total_steps": total_steps, "seeds": list(seeds), "runs": {}}
    for seed in seeds:
        for name, (train, cfg) in configs(seed, total_steps, env_id).items():
            if methods and name not in methods:
                continue
            r = train(cfg)
            hits = [s for s, v in zip(r.eval_steps, r.eval_returns, strict=True) if target is not None and v >= target]
            solved = hits[0] if hits else None
            out["runs"].setdefault(name, []).append(
                {
                    "seed": seed,
                    "config": dataclasses.asdict(cfg),
                    "eval_steps": r.eval_steps,
                    "eval_returns": r.eval_returns,
                    "train_returns": _binned(r.episodes, r.eval_steps),
                    "solved_at": solved,
                    "final_eval": r.eval_returns[-1],
                    "best_eval": max(r.eval_returns),
                    "updates": r.updates,
                    "seconds": r.seconds,
                }
            )
            print(
                f"{name:20s} seed {seed}: solved_at={solved} final={r.eval_returns[-1]:.1f} "
                f"best={max(r.eval_returns):.1f} ({r.seconds:.0f} s)",
                flush=True,
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--env", default="CartPole-v1", choices=["CartPole-v1", "Pendulum-v1"])
    parser.add_argument("--total-steps", type=int, default=None, help="default: 100000 (CartPole), 300000 (Pendulum)")
    parser.add_argument("--methods", nargs="*", default=None, help="subset of REINFORCE+baseline, QAC, A2C")
    parser.add_argument("--out", default="results/rl/cartpole_study.json")
    args = parser.parse_args(argv)
    steps = args.total_steps or (100_000 if args.env == "CartPole-v1" else PENDULUM_A2C.total_steps)
    results = run_study(args.seeds, steps, args.methods, args.env)
    path = save_results(args.out, results, command="python -m lib.rl.study " + " ".join(argv or sys.argv[1:]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
