"""The chapter's CartPole study: REINFORCE + baseline vs QAC vs A2C, and ablations, over seeds, one budget.

Chapter: "Actor-critic, from the policy gradient theorem to A2C".
Run: ``python -m lib.rl.study --seeds 0 1 2 --workers 2 --out results/rl/cartpole_study.json`` (30 runs
of 100,000 steps, 20 to 170 s each on one thread); ``--merge --methods ...`` adds arms to an existing file,
which records their own provenance under ``results["added"]``. Each run trains for the full budget (no early
stop) and records its evaluation curve, the policy's entropy and the training returns; ``solved_at``
is the first evaluation whose 20-episode greedy mean reaches ``target``, ``final_returns`` the 20
returns of the final policy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

from lib.rl.actor_critic import (
    A2CConfig,
    OnPolicyConfig,
    QACConfig,
    ReinforceConfig,
    train_a2c,
    train_qac,
    train_reinforce,
)
from lib.rl.evaluate import evaluate_returns
from lib.utils import load_results, provenance, save_results

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


METHODS = (
    "REINFORCE+baseline",
    "REINFORCE+baseline, constant lr",
    "QAC",
    "QAC+baseline",
    "QAC+baseline, lambda-critic",
    "QAC+baseline, slow actor",
    "QAC critic, GAE weight",
    "QAC critic, TD-error weight",
    "A2C",
    "A2C, constant lr",
)
"""The arms of the CartPole study. "QAC+baseline" changes two fields of "QAC", both baselines: Psi = Q_w - V_Q,
standardised over the batch (as A2C's). The ablations each change one field of another arm:
"..., constant lr" turns off the learning-rate annealing that every other arm uses;
"QAC+baseline, lambda-critic" trains QAC's critic on the lambda-return instead of the TD(0) target;
"QAC+baseline, slow actor" gives the actor a learning rate 0.3 times the critic's (two time scales);
"QAC critic, GAE weight" keeps QAC's critic but weights grad log pi by A2C's GAE computed with
V_Q = sum_a pi Q_w, instead of by the critic's action differences Q_w(s, a) - V_Q(s);
"QAC critic, TD-error weight" does the same with GAE(0), the one-step TD error r + gamma V_Q(s') - V_Q(s)."""

SLOW_ACTOR = 0.3
"""Actor/critic learning-rate ratio of the "slow actor" arm."""


def configs(seed: int, total_steps: int, env_id: str = "CartPole-v1") -> dict:
    """Method name -> (trainer, config) with the same shared fields as :data:`CARTPOLE_A2C`.

    For ``env_id="Pendulum-v1"`` (continuous actions) only A2C, with :data:`PENDULUM_A2C`.
    """
    if env_id == "Pendulum-v1":
        return {"A2C": (train_a2c, dataclasses.replace(PENDULUM_A2C, seed=seed, total_steps=total_steps))}
    if env_id != "CartPole-v1":
        raise ValueError(f"env_id must be 'CartPole-v1' or 'Pendulum-v1', got {env_id!r}")
    common = {f.name: getattr(CARTPOLE_A2C, f.name) for f in dataclasses.fields(OnPolicyConfig)}
    common.update(seed=seed, total_steps=total_steps)  # every method shares the lr schedule (annealed)
    common.pop("normalize_advantages")  # each method keeps its own default (QAC: off)
    lam = CARTPOLE_A2C.gae_lambda
    qac_b = QACConfig(**common, baseline=True, normalize_advantages=True)
    return {
        "REINFORCE+baseline": (train_reinforce, ReinforceConfig(**common)),
        "REINFORCE+baseline, constant lr": (train_reinforce, ReinforceConfig(**{**common, "anneal_lr": False})),
        "QAC": (train_qac, QACConfig(**common)),
        "QAC+baseline": (train_qac, qac_b),
        "QAC+baseline, lambda-critic": (train_qac, dataclasses.replace(qac_b, critic_lambda=lam)),
        "QAC+baseline, slow actor": (train_qac, dataclasses.replace(qac_b, actor_lr_scale=SLOW_ACTOR)),
        "QAC critic, GAE weight": (train_qac, dataclasses.replace(qac_b, actor_lambda=lam)),
        "QAC critic, TD-error weight": (train_qac, dataclasses.replace(qac_b, actor_lambda=0.0)),
        "A2C": (train_a2c, A2CConfig(**common, gae_lambda=lam)),
        "A2C, constant lr": (train_a2c, A2CConfig(**{**common, "anneal_lr": False}, gae_lambda=lam)),
    }


def _binned(episodes: list[tuple[int, float]], edges: list[int]) -> list[float | None]:
    """Mean return of the training episodes that ended in each interval (edges[k-1], edges[k]]."""
    out, lo = [], 0
    for hi in edges:
        returns = [ret for step, ret in episodes if lo < step <= hi]
        out.append(sum(returns) / len(returns) if returns else None)
        lo = hi
    return out


def _run_one(name: str, seed: int, total_steps: int, env_id: str) -> dict:
    """Train one (method, seed) of the study and summarise it (a worker of :func:`run_study`)."""
    train, cfg = configs(seed, total_steps, env_id)[name]
    target = TARGET if env_id == "CartPole-v1" else None
    r = train(cfg)
    hits = [s for s, v in zip(r.eval_steps, r.eval_returns, strict=True) if target is not None and v >= target]
    final = evaluate_returns(r.policy, cfg.env_id, cfg.eval_episodes, seed=10_000 + seed)  # = last evaluation
    print(
        f"{name:28s} seed {seed}: solved_at={hits[0] if hits else None} final={final.mean():.1f} "
        f"best={max(r.eval_returns):.1f} ({r.seconds:.0f} s)",
        flush=True,
    )
    return {
        "seed": seed,
        "config": dataclasses.asdict(cfg),
        "eval_steps": r.eval_steps,
        "eval_returns": r.eval_returns,
        "eval_entropy": r.eval_entropy,
        "train_returns": _binned(r.episodes, r.eval_steps),
        "solved_at": hits[0] if hits else None,
        "final_eval": r.eval_returns[-1],
        "final_returns": final.tolist(),
        "best_eval": max(r.eval_returns),
        "updates": r.updates,
        "stale_fraction": r.stale_fraction,
        "seconds": r.seconds,
    }


def run_study(
    seeds: list[int],
    total_steps: int = 100_000,
    methods: list[str] | None = None,
    env_id: str = "CartPole-v1",
    workers: int = 1,
) -> dict:
    """Train every method for every seed (``workers`` processes); returns a JSON-able dict of curves.

    Each run seeds itself, so the results do not depend on ``workers``.
    """
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    names = list(configs(0, total_steps, env_id))
    if methods:
        unknown = sorted(set(methods) - set(names))
        if unknown:
            raise ValueError(f"methods must be among {names}, got unknown {unknown}")
        names = [n for n in names if n in methods]
    jobs = [(name, seed) for name in names for seed in seeds]
    if workers == 1:
        summaries = [_run_one(name, seed, total_steps, env_id) for name, seed in jobs]
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_run_one, name, seed, total_steps, env_id) for name, seed in jobs]
            summaries = [f.result() for f in futures]
    target = TARGET if env_id == "CartPole-v1" else None
    out: dict = {"env_id": env_id, "target": target, "total_steps": total_steps, "seeds": list(seeds), "runs": {}}
    for (name, _), summary in zip(jobs, summaries, strict=True):
        out["runs"].setdefault(name, []).append(summary)
    return out


def summarise(run: dict, target: float = TARGET) -> dict:
    """Figures of one run of the study (a dict of :func:`run_study`'s ``runs`` lists).

    ``final``: mean of the final policy's 20 returns; ``final_min``: its worst episode;
    ``after_solve``: the evaluations after the first that reached ``target`` (empty if none did);
    ``held``: the fraction of those that reached ``target`` again (None if the run never solved);
    ``entropy_final``: the policy's entropy at the end (nats).
    """
    evals, steps = run["eval_returns"], run["eval_steps"]
    after = [v for s, v in zip(steps, evals, strict=True) if run["solved_at"] is not None and s > run["solved_at"]]
    return {
        "solved_at": run["solved_at"],
        "best": max(evals),
        "final": sum(run["final_returns"]) / len(run["final_returns"]),
        "final_min": min(run["final_returns"]),
        "after_solve": after,
        "held": (sum(v >= target for v in after) / len(after)) if after else None,
        "entropy_final": run["eval_entropy"][-1],
        "stale_fraction": run.get("stale_fraction"),
    }


def merge_results(
    path: str | Path,
    seeds: list[int],
    total_steps: int,
    methods: list[str] | None,
    env_id: str = "CartPole-v1",
    workers: int = 1,
    command: str | None = None,
) -> Path:
    """Run ``methods`` and add them to the study file at ``path``, which keeps its own provenance.

    The new arms must be absent from the file and share its environment, budget and seeds; their
    provenance is appended to ``results["added"]`` (one entry per merge).
    """
    payload = load_results(path)
    old = payload["results"]
    if not methods:
        raise ValueError("methods must name the arms to add when merging")
    if (old["env_id"], old["total_steps"], old["seeds"]) != (env_id, total_steps, list(seeds)):
        raise ValueError(
            f"env_id, total_steps and seeds must match the file's {old['env_id']}, {old['total_steps']}, "
            f"{old['seeds']}; got {env_id}, {total_steps}, {list(seeds)}"
        )
    present = sorted(set(methods) & set(old["runs"]))
    if present:
        raise ValueError(f"methods must be new to {path}, already there: {present}")
    new = run_study(seeds, total_steps, methods, env_id, workers)
    old["runs"].update(new["runs"])
    old.setdefault("added", []).append({"methods": list(new["runs"]), "provenance": provenance(command)})
    path = Path(path)
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--env", default="CartPole-v1", choices=["CartPole-v1", "Pendulum-v1"])
    parser.add_argument("--total-steps", type=int, default=None, help="default: 100000 (CartPole), 300000 (Pendulum)")
    parser.add_argument("--methods", nargs="*", default=None, help=f"subset of {', '.join(METHODS)}")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (one run each)")
    parser.add_argument("--out", default="results/rl/cartpole_study.json")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="add the runs to the existing --out file (same env, budget and seeds), recording their own provenance",
    )
    args = parser.parse_args(argv)
    steps = args.total_steps or (100_000 if args.env == "CartPole-v1" else PENDULUM_A2C.total_steps)
    command = "python -m lib.rl.study " + shlex.join(argv or sys.argv[1:])
    if args.merge:
        path = merge_results(args.out, args.seeds, steps, args.methods, args.env, args.workers, command)
        print(f"merged into {path}")
        return 0
    results = run_study(args.seeds, steps, args.methods, args.env, args.workers)
    path = save_results(args.out, results, command=command)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
