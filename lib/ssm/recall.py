"""Training S6 and S4D Mamba models on selective copying and induction heads (the Mamba paper's tables 1-2 at toy
scale), through the book's one training loop.

``python -m lib.ssm.recall copying`` trains S6 and S4D models over seeds, writes ``results/ssm/copying.json``
and ships the first S6 model as ``weights/ssm_copying_s6.safetensors``; ``python -m lib.ssm.recall induction``
writes ``results/ssm/induction.json``. Chapter: "State space models" (``chapters/ssm.ipynb``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lib.checkpoint import WEIGHTS_DIR, load_checkpoint, save_checkpoint
from lib.data.recall import RecallBatch, induction_heads, selective_copying
from lib.ssm.mamba import MambaConfig, MambaLM, count_parameters
from lib.train import History, train
from lib.utils import DEFAULT_THREADS, load_results, save_results, seed_everything

RESULTS_DIR = Path(__file__).resolve().parents[2] / "results" / "ssm"


@dataclass(frozen=True)
class RecallConfig:
    """One training run on a recall task."""

    task: str = "copying"
    """``"copying"`` (selective copying) or ``"induction"`` (induction heads)."""
    mixer: str = "s6"
    """SSM core of the Mamba blocks: ``"s6"`` or ``"s4d"``."""
    L: int = 64
    """Context length (copying: data + noise; induction: whole sequence)."""
    K: int = 8
    """Data tokens to copy (copying only)."""
    V: int = 8
    """Data symbols."""
    d_model: int = 32
    """Model width."""
    n_layers: int = 2
    """Mamba blocks."""
    d_state: int = 16
    """State size N."""
    batch: int = 32
    """Sequences per step (fresh ones every step)."""
    steps: int = 1000
    """Optimisation steps."""
    lr: float = 3e-3
    """Adam learning rate (peak, reached after the warm-up)."""
    warmup: float = 0.05
    """Share of ``steps`` spent in a linear warm-up of the learning rate."""
    schedule: str = "cosine"
    """After the warm-up: ``"cosine"`` (decay to 0 at the last step) or ``"constant"``."""
    dt_max: float = 0.1
    """Largest initial step size of S6 (:class:`lib.ssm.mamba.MambaConfig`; the smallest is 1e-3)."""
    embed_std: float | None = None
    """Embedding initialisation std (None: torch's default 1; see :class:`lib.ssm.mamba.MambaConfig`)."""
    scan_impl: str | None = None
    """``impl`` of :func:`lib.ssm.scan.selective_scan` (None: its default, the fused loop on the CPU)."""
    seed: int = 0
    """Seed of initialisation and of the training stream."""
    eval_every: int = 100
    """Steps between held-out evaluations."""
    n_eval: int = 512
    """Held-out sequences (a separate generator stream, never trained on)."""

    def __post_init__(self) -> None:
        if self.task not in ("copying", "induction"):
            raise ValueError(f"task must be 'copying' or 'induction', got {self.task!r}")
        for name in ("L", "K", "V", "d_model", "n_layers", "d_state", "batch", "steps", "eval_every", "n_eval"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup must be a share of steps in [0, 1), got {self.warmup!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")

    @property
    def vocab_size(self) -> int:
        return self.V + 2

    def model_config(self) -> MambaConfig:
        return MambaConfig(
            vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers, d_state=self.d_state,
            mixer=self.mixer, scan_impl=self.scan_impl, dt_max=self.dt_max, embed_std=self.embed_std,
        )  # fmt: skip


def make_batch(c: RecallConfig, batch: int, generator: torch.Generator, L: int | None = None) -> RecallBatch:
    """A batch of ``c.task`` (at length ``L``, default ``c.L``)."""
    L = L or c.L
    if c.task == "copying":
        return selective_copying(batch, L, c.K, c.V, generator)
    return induction_heads(batch, L, c.V, generator)


def recall_loss(model: torch.nn.Module, b: RecallBatch) -> dict[str, torch.Tensor]:
    """Cross-entropy at the last ``k`` positions (where the targets are) and the token accuracy there."""
    k = b.targets.shape[1]
    logits = model(b.x)[:, -k:]  # (batch, k, vocab)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), b.targets.reshape(-1))
    acc = (logits.argmax(-1) == b.targets).float().mean()
    return {"loss": loss, "acc": acc.detach()}


@torch.no_grad()
def accuracy(model: torch.nn.Module, b: RecallBatch, chunk: int = 64) -> float:
    """Token accuracy of ``model`` on ``b`` (in chunks of ``chunk`` sequences)."""
    k = b.targets.shape[1]
    correct = 0
    for i in range(0, b.x.shape[0], chunk):
        logits = model(b.x[i : i + chunk])[:, -k:]
        correct += int((logits.argmax(-1) == b.targets[i : i + chunk]).sum())
    return correct / b.targets.numel()


def held_out(c: RecallConfig, L: int | None = None, seed: int = 10_000) -> RecallBatch:
    """The held-out set: ``c.n_eval`` sequences from a generator seeded apart from every training stream."""
    return make_batch(c, c.n_eval, torch.Generator().manual_seed(seed + (L or c.L)), L)


def lr_factor(c: RecallConfig, step: int, steps: int) -> float:
    """Multiplier of ``c.lr`` at ``step`` (0-based) of ``steps``: linear warm-up over ``c.warmup * steps`` steps,
    then cosine decay to 0 (``c.schedule == "cosine"``) or constant."""
    warm = max(1, round(c.warmup * steps))
    decay = 0.5 * (1 + math.cos(math.pi * step / steps)) if c.schedule == "cosine" else 1.0
    return min(1.0, (step + 1) / warm) * decay


def fit(
    c: RecallConfig,
    model: MambaLM | None = None,
    steps: int | None = None,
    verbose: bool = False,
    threads: int | None = DEFAULT_THREADS,
) -> tuple[MambaLM, History]:
    """Train a fresh model (or continue ``model``) for ``steps`` (default ``c.steps``); held-out accuracy is
    evaluated every ``c.eval_every`` steps and after the last (``History.evals``, key ``"acc"``). ``threads`` is
    passed to ``seed_everything`` (torch's thread count; these models are small enough that one thread is
    usually fastest, and on a loaded machine extra threads can make each step many times slower)."""
    seed_everything(c.seed, threads=threads)
    model = model or MambaLM(c.model_config())
    steps = steps or c.steps
    gen = torch.Generator().manual_seed(c.seed)
    test = held_out(c)
    opt = torch.optim.Adam(model.parameters(), lr=c.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(c, s, steps))

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        acc = accuracy(m, test)
        if verbose:
            print(f"{c.task} {c.mixer} seed {c.seed}: held-out accuracy {acc:.3f}", flush=True)
        return {"acc": acc}

    hist = train(
        model, recall_loss, lambda step: make_batch(c, c.batch, gen), steps, optimizer=opt, scheduler=sched,
        grad_clip=1.0, eval_fn=evaluate, eval_every=c.eval_every, log_every=10, desc=f"{c.task}-{c.mixer}",
    )  # fmt: skip
    return model, hist


def weights_path(c: RecallConfig, tag: str | None = None) -> Path:
    """``weights/ssm_<task>_<mixer>.safetensors``, or with ``tag``: ``ssm_<task>_<mixer>_<tag>_seed<seed>``."""
    if tag is None:
        return WEIGHTS_DIR / f"ssm_{c.task}_{c.mixer}.safetensors"
    return WEIGHTS_DIR / f"ssm_{c.task}_{c.mixer}_{tag}_seed{c.seed}.safetensors"


def load_model(path: str | Path) -> tuple[MambaLM, RecallConfig]:
    """Load a shipped recall model (sha256-verified) and the config it was trained with."""
    state, meta = load_checkpoint(path)
    c = RecallConfig(**meta["config"])
    model = MambaLM(c.model_config())
    model.load_state_dict(state)
    return model.eval(), c


def run_study(
    c: RecallConfig,
    seeds: list[int],
    mixers: list[str],
    lengths: list[int],
    ship: bool,
    out: Path,
    command: str,
    threads: int | None = DEFAULT_THREADS,
    ship_tag: str | None = None,
) -> dict[str, Any]:
    """Train every (mixer, seed); record held-out accuracy curves, wall time, parameter counts and accuracy at
    each of ``lengths`` (test lengths: the extrapolation study); rewrite ``out`` after each run. ``ship``: save
    the first seed's model of each mixer as :func:`weights_path`; ``ship_tag``: save every seed's model as
    ``weights_path(c, ship_tag)`` and record its file name in the run (``"weights"``)."""
    runs: list[dict[str, Any]] = []
    results: dict[str, Any] = {"config": dataclasses.asdict(c), "seeds": seeds, "runs": runs}
    for mixer in mixers:
        for seed in seeds:
            rc = dataclasses.replace(c, mixer=mixer, seed=seed)
            t0 = time.perf_counter()
            model, hist = fit(rc, verbose=True, threads=threads)
            seconds = time.perf_counter() - t0
            model.eval()
            at_length = {str(L): accuracy(model, held_out(rc, L)) for L in lengths}
            runs.append({
                "mixer": mixer, "seed": seed, "params": count_parameters(model), "seconds": seconds,
                "steps": [e["step"] + 1 for e in hist.evals], "acc": [e["acc"] for e in hist.evals],
                "final_acc": hist.evals[-1]["acc"], "acc_at_length": at_length,
            })  # fmt: skip
            print(f"{mixer} seed {seed}: acc {hist.evals[-1]['acc']:.3f} in {seconds:.0f}s {at_length}", flush=True)
            paths = ([weights_path(rc)] if ship and seed == seeds[0] else []) + (
                [weights_path(rc, ship_tag)] if ship_tag is not None else []
            )
            for path in paths:
                save_checkpoint(
                    path, model.state_dict(), command=command, seed=seed, config=dataclasses.asdict(rc),
                    extra={"held_out_acc": hist.evals[-1]["acc"], "train_seconds": seconds},
                )  # fmt: skip
            if ship_tag is not None:
                runs[-1]["weights"] = weights_path(rc, ship_tag).name
            save_results(out, results, command=command)
    return results


PROBES: dict[str, dict[str, Any]] = {
    "base": {},
    "lr 1e-3": {"lr": 1e-3},
    "lr 1e-2": {"lr": 1e-2},
    "constant lr": {"schedule": "constant"},
    "no warm-up": {"warmup": 0.0},
    "batch 64": {"batch": 64},
    "width 64": {"d_model": 64},
    "state 4": {"d_state": 4},
    "reference scan": {"scan_impl": "reference"},
    "2000 steps": {"steps": 2000},
    "dt range [1e-3, 1]": {"dt_max": 1.0},
    "embedding std 0.02": {"embed_std": 0.02},
}
"""One-change probes of the selective-copying run (S6, seed 0): name -> the :class:`RecallConfig` fields changed
from the default (``"base"`` changes nothing)."""


def run_probes(
    names: list[str], base: RecallConfig, out: Path, command: str, threads: int | None = DEFAULT_THREADS
) -> dict[str, Any]:
    """Train one S6 model per probe in ``names`` (:data:`PROBES`), each ``base`` with one change, and record its
    held-out accuracy curve and wall time in ``out`` (merged with the probes already there, rewritten after each)."""
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        raise ValueError(f"unknown probes {unknown}; have {list(PROBES)}")
    probes: dict[str, Any] = {}
    if out.exists():
        probes = load_results(out)["results"]["probes"]
    results = {"base": dataclasses.asdict(base), "probes": probes}
    for name in names:
        rc = dataclasses.replace(base, **PROBES[name])
        t0 = time.perf_counter()
        model, hist = fit(rc, verbose=True, threads=threads)
        seconds = time.perf_counter() - t0
        probes[name] = {
            "change": PROBES[name], "command": command, "params": count_parameters(model), "seconds": seconds,
            "steps": [e["step"] + 1 for e in hist.evals], "acc": [e["acc"] for e in hist.evals],
            "final_acc": hist.evals[-1]["acc"], "final_loss": hist.last("loss", 10),
        }  # fmt: skip
        print(f"probe {name!r}: acc {hist.evals[-1]['acc']:.3f} in {seconds:.0f}s", flush=True)
        save_results(out, results, command=command)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lib.ssm.recall", description=__doc__.splitlines()[0])
    p.add_argument("task", choices=["copying", "induction", "probe"], help="probe: one-change probes of copying")
    p.add_argument("--only", nargs="+", default=None, help="probe: the probes to run (default: all)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: BOOK_THREADS or 2)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--L", type=int, default=None, help="training length")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--schedule", choices=["cosine", "constant"], default=None, help="after the warm-up")
    p.add_argument("--embed-std", type=float, default=None, help="embedding initialisation std")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--mixers", nargs="+", default=["s6", "s4d"])
    p.add_argument("--lengths", type=int, nargs="*", default=None, help="held-out test lengths")
    p.add_argument("--no-ship", action="store_true", help="do not write weights/")
    p.add_argument("--ship-tag", default=None, help="also ship every seed as weights/ssm_<task>_<mixer>_<TAG>_seed<s>")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    threads = DEFAULT_THREADS if a.threads is None else a.threads
    c = RecallConfig(task="induction", L=32, V=8, steps=800) if a.task == "induction" else RecallConfig()
    given = {"steps": a.steps, "L": a.L, "batch": a.batch, "lr": a.lr, "schedule": a.schedule, "embed_std": a.embed_std}
    c = dataclasses.replace(c, **{k: v for k, v in given.items() if v is not None})
    command = "python -m lib.ssm.recall " + " ".join(sys.argv[1:] if argv is None else argv)
    if a.task == "probe":
        run_probes(a.only or list(PROBES), c, a.out or RESULTS_DIR / "copying_probes.json", command, threads)
        return 0
    lengths = a.lengths if a.lengths is not None else ([c.L] if a.task == "copying" else [c.L * 2**i for i in range(5)])
    out = a.out or RESULTS_DIR / f"{a.task}.json"
    run_study(c, a.seeds, a.mixers, lengths, not a.no_ship, out, command, threads, ship_tag=a.ship_tag)
    return 0


def load_runs(*paths: str | Path) -> list[dict[str, Any]]:
    """The ``runs`` of one or more results files written by :func:`run_study` (provenance checked)."""
    from lib.utils import load_results

    return [r for p in paths for r in load_results(p)["results"]["runs"]]


def summarize(runs: list[dict[str, Any]], key: str = "final_acc") -> dict[str, dict[str, float]]:
    """Per mixer: mean, min and max of ``key`` over seeds, the seed count, mean parameters and seconds."""
    out: dict[str, dict[str, float]] = {}
    for mixer in sorted({r["mixer"] for r in runs}):
        rs = [r for r in runs if r["mixer"] == mixer]
        vals = [r[key] for r in rs]
        out[mixer] = {
            "mean": sum(vals) / len(vals), "min": min(vals), "max": max(vals), "seeds": len(vals),
            "params": sum(r["params"] for r in rs) / len(rs), "seconds": sum(r["seconds"] for r in rs) / len(rs),
        }  # fmt: skip
    return out


if __name__ == "__main__":
    raise SystemExit(main())
