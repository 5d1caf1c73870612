"""Plumbing every chapter uses: seeding, device choice, timing and results files with provenance.

Chapter: "Running this book" (``chapters/running.ipynb``).

Glossary
--------
seed_everything   one call that seeds python, numpy and torch and fixes the thread count
get_device        the device chosen at run time (CUDA if present, else CPU)
benchmark         warm-up + median wall time of R back-to-back calls (CUDA events on GPU, ``perf_counter`` on CPU)
compare           several functions timed interleaved, round by round (ratios robust to a drifting load)
provenance        who/what/when of a measurement (device, driver, clocks, versions, date, command, git commit)
save_results      write a JSON results file with its provenance block
saved_tensor_bytes  bytes autograd keeps for the backward pass of a call (activation memory, measured)
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEFAULT_THREADS = int(os.environ.get("BOOK_THREADS", "2"))
"""Thread count used by :func:`seed_everything`: 2 (the book's reference machine has 2 cores), or the
environment variable ``BOOK_THREADS`` (e.g. 1 when several jobs share the machine)."""


def seed_everything(seed: int, threads: int | None = DEFAULT_THREADS, deterministic: bool = True) -> torch.Generator:
    """Seed python, numpy and torch (all devices) and fix torch's thread count.

    Args:
        seed: a non-negative integer.
        threads: number of intra-op threads for torch (``None`` leaves it unchanged).
        deterministic: ask torch for deterministic algorithms where it has them (``warn_only``
            so an op without a deterministic version still runs).

    Returns:
        A ``torch.Generator`` on the CPU seeded with ``seed``, for code that takes one explicitly.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if threads is not None:
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        if torch.backends.cudnn.is_available():
            torch.backends.cudnn.benchmark = False
    return torch.Generator().manual_seed(seed)


def get_device(prefer: str | None = None) -> torch.device:
    """The device to run on, chosen at run time.

    Args:
        prefer: ``"cuda"``, ``"cpu"`` or ``None`` (CUDA when available, else CPU). The environment
            variable ``BOOK_DEVICE`` overrides ``None``.
    """
    prefer = prefer or os.environ.get("BOOK_DEVICE")
    if prefer is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if prefer not in ("cuda", "cpu"):
        raise ValueError(f"prefer must be 'cuda', 'cpu' or None, got {prefer!r}")
    if prefer == "cuda" and not torch.cuda.is_available():
        raise ValueError("prefer='cuda' but torch.cuda.is_available() is False")
    return torch.device(prefer)


@dataclass(frozen=True)
class Timing:
    """Result of :func:`benchmark`: all repeat times in seconds and their median."""

    times: tuple[float, ...]
    """Wall time of each timed repeat, seconds."""
    median: float = field(init=False)
    """Median of ``times``, seconds."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "median", statistics.median(self.times))

    def __str__(self) -> str:
        return f"{self.median * 1e3:.3f} ms (median of {len(self.times)})"


def benchmark(
    fn: Callable[[], Any],
    warmup: int = 2,
    repeat: int = 5,
    device: torch.device | str | None = None,
    inner: int = 1,
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then the median of ``repeat`` timed samples.

    Each sample runs ``inner`` back-to-back calls between one pair of clock readings and records their mean, so
    that fast kernels are not charged a synchronisation (and the Python launch overhead it exposes) per call. On
    CUDA the clock is a pair of CUDA events around the ``inner`` calls (so queued kernels count) and the device is
    synchronised once per sample; on the CPU it is ``time.perf_counter``.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if warmup < 0 or repeat < 1:
        raise ValueError(f"need warmup >= 0 and repeat >= 1, got warmup={warmup}, repeat={repeat}")
    if not isinstance(inner, int) or isinstance(inner, bool) or inner < 1:
        raise ValueError(f"inner must be a positive int, got {inner!r}")
    device = torch.device(device) if device is not None else get_device()
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeat):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1e3 / inner)
    else:
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            times.append((time.perf_counter() - t0) / inner)
    return Timing(tuple(times))


def compare(
    fns: dict[str, Callable[[], Any]], warmup: int = 1, repeat: int = 5, device: torch.device | str | None = None
) -> dict[str, Timing]:
    """Time several functions *interleaved*: each round runs every function once, in turn, ``repeat`` rounds.

    A ratio of two medians is then robust to the machine's load drifting during the measurement (every function
    sees the same drift), which back-to-back blocks of repeats are not. Returns ``{name: Timing}``.
    """
    if not isinstance(fns, dict) or not fns or not all(callable(f) for f in fns.values()):
        raise TypeError("fns must be a non-empty dict of callables")
    if warmup < 0 or repeat < 1:
        raise ValueError(f"need warmup >= 0 and repeat >= 1, got warmup={warmup}, repeat={repeat}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            times[name].append(benchmark(fn, warmup=0, repeat=1, device=device).times[0])
    return {name: Timing(tuple(t)) for name, t in times.items()}


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:  # not installed, or fails to import on this machine
        return None
    return getattr(mod, "__version__", None)


def provenance(command: str | None = None) -> dict[str, Any]:
    """Where and how a measurement was made: device, driver, clocks, library versions, date, command, git commit."""
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": command if command is not None else " ".join([Path(sys.executable).name, *sys.argv]),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "triton": _version("triton"),
        "cuda": torch.version.cuda,
        "device": "cpu",
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            device="cuda",
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            compute_capability=f"{props.major}.{props.minor}",
            driver=_nvidia_driver(),
            sm_count=props.multi_processor_count,
            clocks=_nvidia_clocks(),
        )
    commit = git_commit()
    if commit is not None:
        info["git_commit"] = commit
    return info


def _nvidia_smi(query: str) -> str | None:
    """First line of ``nvidia-smi --query-gpu=<query> --format=csv,noheader``, or None where unavailable."""
    try:
        import subprocess

        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except Exception:
        return None


def _nvidia_driver() -> str | None:
    return _nvidia_smi("driver_version")


def _nvidia_clocks() -> dict[str, str] | None:
    """Current and maximum SM and memory clocks and the power limit, as nvidia-smi reports them (None if unreadable)."""
    fields = ("clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem", "power.limit")
    line = _nvidia_smi(",".join(fields))
    if line is None:
        return None
    values = [v.strip() for v in line.split(",")]
    return dict(zip(fields, values, strict=False)) if len(values) == len(fields) else None


def git_commit(root: str | Path | None = None) -> str | None:
    """The git commit of the working tree (``HEAD``, with ``-dirty`` when tracked files changed), or None."""
    try:
        import subprocess

        cwd = Path(root) if root is not None else Path(__file__).resolve().parents[1]
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
    except Exception:
        return None


def spread(values: list[float]) -> dict[str, Any]:
    """One figure over seeds: ``{"mean", "std" (sample, 0 for one value), "n", "min", "max", "values"}``."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("values is empty")
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals),
            "min": min(vals), "max": max(vals), "values": vals}  # fmt: skip


def save_results(path: str | Path, results: Any, command: str | None = None) -> Path:
    """Write ``{"provenance": ..., "results": results}`` as JSON to ``path`` and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"provenance": provenance(command), "results": results}
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return path


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a results file written by :func:`save_results`; checks it carries provenance."""
    payload = json.loads(Path(path).read_text())
    if not isinstance(payload, dict) or "provenance" not in payload or "results" not in payload:
        raise ValueError(f"{path} is not a results file (needs 'provenance' and 'results' keys)")
    return payload


def saved_tensor_bytes(
    fn: Callable[..., Any], *args: Any, exclude: Any = (), alive_only: bool = False
) -> tuple[Any, int]:
    """Run ``fn(*args)`` and count the bytes of the tensors autograd saves for the backward pass.

    Every tensor an op saves passes through ``torch.autograd.graph.saved_tensors_hooks``' pack hook; storages
    are counted once (a view and its base share one). Storages of the tensors in ``exclude`` (inputs or
    parameters the caller holds anyway) are skipped. With ``alive_only``, only tensors still alive when ``fn``
    returns count (graphs freed inside ``fn``, e.g. an adjoint's inner solves, do not).

    Returns:
        ``(fn's output, bytes)``.

    Used by the FlashAttention, mixed-precision and flows chapters.
    """
    import weakref

    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}
    refs: list[weakref.ref] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if alive_only:
            refs.append(weakref.ref(t))
        elif t.untyped_storage().data_ptr() not in skip:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    for r in refs:
        t = r()
        if t is not None and t.untyped_storage().data_ptr() not in skip:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return out, sum(seen.values())
