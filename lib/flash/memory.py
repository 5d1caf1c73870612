"""Measured peak memory of one call: the process's peak resident set (CPU) or the caching allocator (CUDA).

Chapter: "FlashAttention in three layers" (the memory experiment). On CPU, torch has no allocator statistics,
so we measure what the operating system sees: Linux keeps a high-water mark of the resident set (``VmHWM`` in
``/proc/self/status``) that a write of ``5`` to ``/proc/self/clear_refs`` resets. To make freed tensors leave the
resident set at once, glibc is told (``mallopt``) to serve every allocation above 64 KiB with its own ``mmap``
and to give it back on ``free``, and ``malloc_trim`` releases the free heap memory before the measurement (so a
reused free block must be faulted in again and is counted). Smaller allocations (a few KiB of bookkeeping) and
the kernel's lazy per-thread accounting of the resident set (a few hundred KiB) limit the resolution: read
results below ~0.5 MiB as "below resolution". After the measurement the threshold is raised to 4 MiB (mmap-ing
every medium-sized block makes tile-by-tile code several times slower); glibc's adaptive threshold stays off.

Glossary
--------
peak_bytes   peak of (resident or allocated) memory during the call minus the amount just before it
seconds      wall time of the measured call (one call: a rough number, not a benchmark)
"""

from __future__ import annotations

import ctypes
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lib.utils import saved_tensor_bytes as _saved_tensor_bytes

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_BYTES = 64 * 1024  # while measuring: every block above this is its own mmap, returned on free
_RESTORE_MMAP_BYTES = 4 * 2**20  # afterwards: tiles of a few hundred KiB come from the heap again (fast)


@dataclass(frozen=True)
class PeakMemory:
    """Result of :func:`measure_peak_memory`."""

    peak_bytes: int
    """Peak extra memory during the call, bytes (the output included, the inputs excluded)."""
    seconds: float
    """Wall time of the measured call, seconds."""


def _status_bytes(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) * 1024


def _set_malloc_thresholds(mmap_bytes: int) -> None:
    status, clear = Path("/proc/self/status"), Path("/proc/self/clear_refs")
    if not status.exists() or not clear.exists():
        raise RuntimeError("CPU peak memory is measured through /proc/self (Linux only); not available here")
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(_M_MMAP_THRESHOLD, mmap_bytes)
    libc.mallopt(_M_TRIM_THRESHOLD, 2 * mmap_bytes)


def _reset_cpu_peak() -> int:
    # free heap memory that is still resident would be reused without raising the resident set: release it first
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    return _status_bytes("VmRSS")


def measure_peak_memory(fn: Callable[[], Any], warmup: int = 1, device: torch.device | str | None = None) -> PeakMemory:
    """Peak extra memory of one call ``fn()`` (after ``warmup`` untimed calls), on ``device``'s memory.

    Args:
        fn: the call to measure; its return value is kept alive until the peak is read, then dropped.
        warmup: calls made first (one-time initialisation such as thread pools is not the algorithm's memory).
        device: ``"cpu"`` (peak resident set, Linux) or ``"cuda"`` (``torch.cuda.max_memory_allocated``);
            default: CUDA when available.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int, got {warmup!r}")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device}")
    if device.type == "cuda":
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        _set_malloc_thresholds(_MMAP_BYTES)
        try:
            for _ in range(warmup):
                fn()
            base = _reset_cpu_peak()
            t0 = time.perf_counter()
            out = fn()
            seconds = time.perf_counter() - t0
            peak = _status_bytes("VmHWM") - base
        finally:
            _set_malloc_thresholds(_RESTORE_MMAP_BYTES)
    del out
    return PeakMemory(peak_bytes=max(int(peak), 0), seconds=seconds)


def saved_tensor_bytes(fn: Callable[..., Any], *inputs: torch.Tensor) -> int:
    """Bytes that autograd keeps for the backward pass of ``fn(*inputs)``, the inputs' own storage excluded
    (:func:`lib.utils.saved_tensor_bytes`: every saved storage counted once, through the pack hook)."""
    return _saved_tensor_bytes(fn, *inputs, exclude=inputs)[1]
