"""Benchmark: matmul TFLOP/s and a training step in FP32, TF32, FP16 and BF16 (autocast).

Usage (writes a JSON results file with provenance through :func:`lib.utils.save_results`)::

    python -m lib.precision.bench                      # device chosen at run time, default sizes
    python -m lib.precision.bench --sizes 256 512 --out /tmp/precision_cpu.json
    python -m lib.precision.bench --dry --out /tmp/precision_dry.json   # CPU, tiny sizes, seconds (make test)

The results file is rewritten after every size (an interrupted run keeps what it measured), the largest
configurations (the chapter's headline) run first, and ``--max-seconds`` starts no new size after a deadline.
Each sample times several back-to-back calls between one pair of CUDA events (``lib.utils.benchmark``'s
``inner``), so small products are not charged a synchronisation per call.

On a GPU the chapter reads ``results/precision/bench_cuda.json``; until one is committed it says
"not measured yet". TF32 is a CUDA tensor-core mode (``torch.backends.cuda.matmul.allow_tf32``); on a
CPU the "tf32" rows are FP32 with ``torch.set_float32_matmul_precision("high")`` and measure whatever
the CPU backend does with that hint.

Chapter: "Mixed precision training" (``chapters/mixed_precision.ipynb``).

Glossary
--------
n         matrix size: an (n, n) @ (n, n) product costs 2 n**3 flops
TFLOP/s   2 n**3 / median time / 1e12
speedup   FP32 time / time, same size and device
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from lib.utils import benchmark, get_device, save_results, seed_everything

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")


@contextmanager
def matmul_precision(precision: str):
    """Within the block, FP32 matmuls use TF32 when ``precision == "tf32"`` (restored afterwards)."""
    old_prec, old_cuda = torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32
    try:
        tf32 = precision == "tf32"
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
        torch.backends.cuda.matmul.allow_tf32 = tf32
        yield
    finally:
        torch.set_float32_matmul_precision(old_prec)
        torch.backends.cuda.matmul.allow_tf32 = old_cuda


def _dtype(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)


def _inner(fn, device: torch.device, target: float = 0.02, max_inner: int = 50) -> int:
    """Back-to-back calls per timed sample: about ``target`` seconds of work (1 on the CPU)."""
    if device.type != "cuda":
        return 1
    t = benchmark(fn, warmup=1, repeat=1, device=device).median
    return int(min(max_inner, max(1, round(target / max(t, 1e-7)))))


def time_matmul(n: int, precision: str, device: torch.device, repeat: int = 5) -> dict[str, float]:
    """Median time and TFLOP/s of an ``(n, n) @ (n, n)`` product with inputs stored in ``precision``."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, _dtype(precision))
    b = torch.randn(n, n, generator=g).to(device, _dtype(precision))
    with matmul_precision(precision):
        inner = _inner(lambda: a @ b, device)
        t = benchmark(lambda: a @ b, warmup=2, repeat=repeat, device=device, inner=inner).median
    return {"n": n, "seconds": t, "tflops": 2 * n**3 / t / 1e12, "inner": inner}


def time_train_step(width: int, precision: str, device: torch.device, batch: int = 256, repeat: int = 5):
    """Median time of one MLP training step (forward, backward, Adam) under autocast in ``precision``.

    FP16 uses a ``GradScaler``; the parameters stay FP32 (autocast keeps master weights in FP32).
    """
    if not isinstance(width, int) or width < 1 or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"width and batch must be positive ints, got width={width!r}, batch={batch!r}")
    seed_everything(0, threads=None, deterministic=False)  # model initialisation
    model = torch.nn.Sequential(
        torch.nn.Linear(width, 4 * width), torch.nn.GELU(), torch.nn.Linear(4 * width, width)
    ).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch, width, device=device)
    dtype = _dtype(precision)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def step() -> None:
        ctx = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
        with ctx:
            loss = model(x).float().pow(2).mean()
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        opt.zero_grad(set_to_none=True)

    with matmul_precision(precision):
        inner = _inner(step, device)
        t = benchmark(step, warmup=2, repeat=repeat, device=device, inner=inner).median
    flops = 3 * 2 * batch * (2 * width * 4 * width)  # forward + 2x backward, two Linear layers
    return {"width": width, "batch": batch, "seconds": t, "tflops": flops / t / 1e12, "inner": inner}


def run(
    sizes: list[int],
    widths: list[int],
    device: torch.device,
    repeat: int = 5,
    on_row=None,
    max_seconds: float = math.inf,
) -> dict:
    """All timings: ``{"matmul": [...], "train_step": [...]}`` with a ``speedup`` vs FP32 per row.

    Sizes and widths run largest first; ``on_row(results)`` is called after each size (to rewrite the results
    file); no new size starts after ``max_seconds`` (those left are listed under ``"skipped"``)."""
    out: dict[str, list] = {"matmul": [], "train_step": [], "skipped": []}
    t0 = time.perf_counter()
    todo = [("matmul", n) for n in sorted(sizes, reverse=True)] + [
        ("train_step", w) for w in sorted(widths, reverse=True)
    ]
    for i, (kind, size) in enumerate(todo):
        if time.perf_counter() - t0 > max_seconds:
            out["skipped"] = [{"kind": k, "size": s} for k, s in todo[i:]]
            break
        if kind == "matmul":
            rows = [{"precision": p, **time_matmul(size, p, device, repeat)} for p in PRECISIONS]
        else:
            rows = [{"precision": p, **time_train_step(size, p, device, repeat=repeat)} for p in PRECISIONS]
        out[kind] += [{**r, "speedup": rows[0]["seconds"] / r["seconds"]} for r in rows]
        if on_row is not None:
            on_row(out)
    return out


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description="Time matmuls and a training step in FP32/TF32/FP16/BF16.")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="matmul sizes n")
    p.add_argument("--widths", type=int, nargs="+", default=None, help="MLP widths of the training step")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--max-seconds", type=float, default=math.inf, help="start no new size after this many seconds")
    p.add_argument("--dry", action="store_true", help="CPU, tiny sizes: the code path of a GPU run in seconds")
    p.add_argument("--out", type=Path, default=None, help="default results/precision/bench_<device>.json")
    args = p.parse_args(argv)
    device = get_device("cpu" if args.dry else args.device)
    cuda = device.type == "cuda"
    if args.dry:
        sizes, widths, repeat = args.sizes or [16], args.widths or [8], 1
    else:
        sizes = args.sizes or ([1024, 4096, 8192] if cuda else [128, 256])
        widths = args.widths or ([1024, 4096] if cuda else [128])
        repeat = args.repeat
    out = args.out or Path("results/precision") / f"bench_{device.type}.json"
    command = "python -m lib.precision.bench " + " ".join(sys.argv[1:] if argv is None else argv)

    def save(partial: dict) -> Path:
        return save_results(out, {"device_type": device.type, **partial}, command=command.strip())

    results = {
        "device_type": device.type,
        **run(sizes, widths, device, repeat, on_row=save, max_seconds=args.max_seconds),
    }
    path = save(results)
    for kind in ("matmul", "train_step"):
        for r in results[kind]:
            size = r.get("n", r.get("width"))
            print(
                f"{kind:10s} {size:6d} {r['precision']:5s} {r['seconds'] * 1e3:9.3f} ms "
                f"{r['tflops']:8.3f} TFLOP/s  x{r['speedup']:.2f}"
            )
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main(sys.argv[1:])
