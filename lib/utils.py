"""Plumbing every chapter uses: seeding, device choice, timing and results files with provenance.

Chapter: "Running this book" (``chapters/running.ipynb``).

Glossary
--------
seed_everything   one call that seeds python, numpy and torch and fixes the thread count
get_device        the device chosen at run time (CUDA if present, else CPU)
benchmark         warm-up + median wall time (CUDA events on GPU, ``perf_counter`` on CPU)
provenance        who/what/when of a measurement (device, driver, versions, date, command)
save_results      write a JSON results file with its provenance block
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
    fn: Callable[[], Any], warmup: int = 2, repeat: int = 5, device: torch.device | str | None = None
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then the median of ``repeat`` timed calls.

    On CUDA the time is measured with CUDA events around each call (so queued kernels count);
    on the CPU with ``time.perf_counter``.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if warmup < 0 or repeat < 1:
        raise ValueError(f"need warmup >= 0 and repeat >= 1, got warmup={warmup}, repeat={repeat}")
    device = torch.device(device) if device is not None else get_device()
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeat):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return Timing(tuple(times))


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:  # not installed, or fails to import on this machine
        return None
    return getattr(mod, "__version__", None)


def provenance(command: str | None = None) -> dict[str, Any]:
    """Where and how a measurement was made: device, driver, library versions, date, command."""
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
        )
    return info


def _nvidia_driver() -> str | None:
    try:
        import subprocess

        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
    except Exception:
        return None


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
