"""Training S6 and S4D Mamba models on selective copying and induction heads (the Mamba paper's tables 1-2 at toy
scale), through the book's one training loop.

``python -m lib.ssm.recall copying`` trains S6 and S4D models over seeds, writes ``results/ssm/copying.json``
and ships the first S6 model as ``weights/ssm_copying_s6.safetensors``; ``python -m lib.ssm.recall induction``
writes ``results/ssm/induction.json``. Chapter: "State space models" (``chapters/ssm.ipynb``).
"""

from __future__ import annotations

import argparse
import dataclasses
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
from lib.utils import DEFAULT_THREADS, save_results, seed_everything

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
    """Adam learning rate (cosine-decayed to 0 after a 5% warm-up)."""
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

    @property
    def vocab_size(self) -> int:
        return self.V + 2

    def model_config(self) -> MambaConfig:
        return MambaConfig(
            vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers, d_state=self.d_state,
            mixer=self.mixer,
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
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * s / steps)).item())
    )

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


def weights_path(c: RecallConfig) -> Path:
    return WEIGHTS_DIR / f"ssm_{c.task}_{c.mixer}.safetensors"


def load_model(path: str | Path) -> tuple[MambaLM, RecallConfig]:
    """Load a shipped recall model (sha256-verified) and the config it was trained with."""
    state, meta = load_checkpoint(path)
    c = RecallConfig(**meta["config"])
    model = MambaLM(c.model_config())
    model.load_state_dict(state)
    return model.eval(), c


def run_study(
    c: RecallConfig, seeds: list[int], mixers: list[str], lengths: list[int], ship: bool, out: Path, command: str
) -> dict[str, Any]:
    """Train every (mixer, seed); record held-out accuracy curves, wall time, parameter counts and accuracy at
    each of ``lengths`` (test lengths: the extrapolation study); rewrite ``out`` after each run."""
    runs: list[dict[str, Any]] = []
    results: dict[str, Any] = {"config": dataclasses.asdict(c), "seeds": seeds, "runs": runs}
    for mixer in mixers:
        for seed in seeds:
            rc = dataclasses.replace(c, mixer=mixer, seed=seed)
            t0 = time.perf_counter()
            model, hist = fit(rc, verbose=True)
            seconds = time.perf_counter() - t0
            model.eval()
            at_length = {str(L): accuracy(model, held_out(rc, L)) for L in lengths}
            runs.append({
                "mixer": mixer, "seed": seed, "params": count_parameters(model), "seconds": seconds,
                "steps": [e["step"] + 1 for e in hist.evals], "acc": [e["acc"] for e in hist.evals],
                "final_acc": hist.evals[-1]["acc"], "acc_at_length": at_length,
            })  # fmt: skip
            print(f"{mixer} seed {seed}: acc {hist.evals[-1]['acc']:.3f} in {seconds:.0f}s {at_length}", flush=True)
            if ship and seed == seeds[0]:
                save_checkpoint(
                    weights_path(rc), model.state_dict(), command=command, seed=seed, config=dataclasses.asdict(rc),
                    extra={"held_out_acc": hist.evals[-1]["acc"], "train_seconds": seconds},
                )  # fmt: skip
            save_results(out, results, command=command)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lib.ssm.recall", description=__doc__.splitlines()[0])
    p.add_argument("task", choices=["copying", "induction"])
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--L", type=int, default=None, help="training length")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--mixers", nargs="+", default=["s6", "s4d"])
    p.add_argument("--lengths", type=int, nargs="*", default=None, help="held-out test lengths")
    p.add_argument("--no-ship", action="store_true", help="do not write weights/")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    c = RecallConfig(task=a.task) if a.task == "copying" else RecallConfig(task="induction", L=32, V=8, steps=800)
    c = dataclasses.replace(
        c, **{k: v for k, v in (("steps", a.steps), ("L", a.L), ("batch", a.batch)) if v is not None}
    )
    lengths = a.lengths if a.lengths is not None else ([c.L] if a.task == "copying" else [c.L * 2**i for i in range(5)])
    out = a.out or RESULTS_DIR / f"{a.task}.json"
    command = "python -m lib.ssm.recall " + " ".join(sys.argv[1:] if argv is None else argv)
    run_study(c, a.seeds, a.mixers, lengths, not a.no_ship, out, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


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
