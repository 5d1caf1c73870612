"""Benchmark of the selective-scan implementations, forward and forward + backward, at L = 4096.

``python -m lib.ssm.bench --device cpu --threads 1 --out results/ssm/scan_cpu.json`` (the chapter's CPU table) and
``python -m lib.ssm.bench --device cuda --out results/ssm/scan_cuda.json`` (``make gpu``: adds the Triton kernel
and a larger size). The results file is rewritten, with provenance, after every row, most important rows first,
so an interrupted run still leaves a valid file. Chapter: "State space models" (``chapters/ssm.ipynb``).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lib.ssm.scan import selective_scan
from lib.utils import DEFAULT_THREADS, benchmark, save_results, seed_everything

MODES = ("fwd", "fwd+bwd")


@dataclass(frozen=True)
class Row:
    """One measurement: an implementation, a mode and a size."""

    impl: str
    mode: str
    batch: int
    d: int
    n: int = 16
    L: int = 4096


def default_rows(device: str, L: int = 4096) -> list[Row]:
    """The rows measured on ``device``, most important first. The small size ``(batch 1, d 16)`` is the one where
    autograd through the reference loop (quadratic backward) still finishes; on a GPU a larger size follows."""
    small = [
        Row(impl, mode, 1, 16, L=L)
        for impl in ("loop", "chunked", "logdepth", "reference")
        for mode in MODES
    ]  # fmt: skip
    if device == "cpu":
        return small
    big = [Row(impl, mode, 4, 512, L=L) for impl in ("triton", "loop", "logdepth", "chunked") for mode in MODES]
    triton_small = [Row("triton", mode, 1, 16, L=L) for mode in MODES]
    return big[:2] + triton_small + small[:2] + small[-2:] + big[2:] + small[2:-2]


def inputs(r: Row, device: torch.device, seed: int = 0) -> list[torch.Tensor]:
    """Fresh ``u, delta, A, B, C, D, z, delta_bias`` for a row (float32, Mamba-like scales)."""
    g = torch.Generator().manual_seed(seed)
    b, d, n, L = r.batch, r.d, r.n, r.L
    t = [
        torch.randn(b, d, L, generator=g),
        torch.randn(b, d, L, generator=g) - 2.0,  # softplus(-2 + noise) ~ 0.1: typical step sizes
        -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1),  # S4D-Real
        torch.randn(b, n, L, generator=g),
        torch.randn(b, n, L, generator=g),
        torch.randn(d, generator=g),
        torch.randn(b, d, L, generator=g),
        torch.zeros(d),
    ]
    return [x.to(device) for x in t]


def check_output(r: Row, device: torch.device, rtol: float = 1e-3, atol: float = 1e-3) -> None:
    """Refuse to time a wrong computation: the row's output on its inputs must be finite and equal (``allclose``)
    to the fused loop's. Raises ``AssertionError`` otherwise."""
    u, delta, A, B, C, D, z, bias = inputs(r, device)
    with torch.no_grad():
        kw = dict(D=D, z=z, delta_bias=bias, delta_softplus=True)
        y = selective_scan(u, delta, A, B, C, **kw, impl=r.impl)
        assert torch.isfinite(y).all(), f"{r.impl}: {int((~torch.isfinite(y)).sum())} non-finite outputs"
        if r.impl != "loop":
            want = selective_scan(u, delta, A, B, C, **kw, impl="loop")
            err = float((y - want).abs().max())
            assert torch.allclose(y, want, rtol=rtol, atol=atol), f"{r.impl} differs from the loop by {err:.2e}"


def measure(r: Row, device: torch.device, repeat: int = 3) -> dict[str, Any]:
    """Median time of one row (the slow reference is timed once, without warm-up), after :func:`check_output`."""
    check_output(r, device)
    u, delta, A, B, C, D, z, bias = inputs(r, device)
    leaves = [x.requires_grad_(r.mode == "fwd+bwd") for x in (u, delta, A, B, C)]

    def fn():
        with torch.set_grad_enabled(r.mode == "fwd+bwd"):
            y = selective_scan(*leaves, D=D, z=z, delta_bias=bias, delta_softplus=True, impl=r.impl)
            if r.mode == "fwd+bwd":
                torch.autograd.grad(y.sum(), leaves)
        return y

    slow = r.impl == "reference" or (device.type == "cpu" and r.impl == "triton")
    timing = benchmark(fn, warmup=0 if slow else 1, repeat=1 if slow else repeat, device=device)
    return {**r.__dict__, "seconds": timing.median, "times": list(timing.times), "device": device.type}


def run(
    device: str,
    out: Path | None,
    L: int = 4096,
    repeat: int = 3,
    command: str | None = None,
    verbose=True,
    threads: int | None = None,
):
    """Measure :func:`default_rows` in order; rewrite ``out`` after each row. Returns the rows. ``threads``: torch's
    intra-op threads (default: :data:`lib.utils.DEFAULT_THREADS`)."""
    dev = torch.device(device)
    seed_everything(0, threads=DEFAULT_THREADS if threads is None else threads)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for r in default_rows(device, L):
        row = measure(r, dev, repeat)
        rows.append(row)
        if verbose:
            print(f"{r.impl:>9} {r.mode:>7} b={r.batch} d={r.d} L={r.L}: {row['seconds'] * 1e3:10.2f} ms", flush=True)
        if out is not None:
            save_results(out, {"rows": rows, "elapsed_s": time.perf_counter() - t0}, command=command)
    return rows


def lookup(rows: list[dict[str, Any]], impl: str, mode: str, batch: int = 1, d: int = 16) -> float:
    """Seconds of the row ``(impl, mode, batch, d)``."""
    for r in rows:
        if (r["impl"], r["mode"], r["batch"], r["d"]) == (impl, mode, batch, d):
            return r["seconds"]
    raise KeyError(f"no row {(impl, mode, batch, d)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lib.ssm.bench", description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--L", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: BOOK_THREADS or 2)")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available")
    command = "python -m lib.ssm.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    run(a.device, a.out, a.L, a.repeat, command, threads=a.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def backward_elements(impl: str, L: int, batch: int = 1, d: int = 4, n: int = 4) -> int:
    """Number of tensor elements written by all operations of one backward pass of ``impl`` at length ``L`` (a
    count of work that does not depend on the machine's load, made with a ``TorchDispatchMode``)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.elements = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.elements += sum(t.numel() for t in tree_leaves(out) if torch.is_tensor(t))
            return out

    u, delta, A, B, C, D, z, bias = inputs(Row(impl, "fwd+bwd", batch, d, n, L), torch.device("cpu"))
    leaves = [x.requires_grad_() for x in (u, delta, A, B, C)]
    y = selective_scan(*leaves, D=D, z=z, delta_bias=bias, delta_softplus=True, impl=impl)
    counter = Count()
    with counter:
        torch.autograd.grad(y.sum(), leaves)
    return counter.elements
