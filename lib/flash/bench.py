"""Benchmark: forward and forward+backward TFLOP/s and peak memory of naive attention, torch SDPA and our kernels.

Run ``python -m lib.flash.bench`` (``--help`` for options). On a CUDA machine it sweeps sequence lengths 512 to
16384, head dims 64 and 128, causal and not, FP16 and BF16, with ``batch * seq = 16384`` tokens and
``heads * head_dim = 2048`` (the FlashAttention-2 paper's setting) and writes ``results/flash/bench_cuda.json``;
on CPU it runs a small smoke sweep in FP32 (``results/flash/bench_cpu.json``). Every configuration is wrapped:
one that fails (out of memory, a compile error) is recorded with its error and the sweep goes on; the file is
rewritten after every configuration, so an interrupted run still leaves its results.
Chapter: "FlashAttention in three layers".

Glossary
--------
provider   ``naive`` (lib.nn.attention), ``sdpa`` (torch's choice of backend), ``sdpa_flash`` (torch's FlashAttention-2
           backend forced, CUDA), ``triton`` (lib.flash.triton_kernels), ``blockwise`` (lib.flash.blockwise, CPU)
flops      forward ``4 B H N^2 d`` (halved when causal); forward+backward 3.5 times that (backward = 2.5 forward)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lib.utils import benchmark, save_results

GPU_PROVIDERS = ("naive", "sdpa", "sdpa_flash", "triton")
CPU_PROVIDERS = ("naive", "sdpa", "blockwise", "triton")


@dataclass(frozen=True)
class BenchConfig:
    """One sweep of :func:`run`."""

    seq_lens: tuple[int, ...] = (512, 1024, 2048, 4096, 8192, 16384)
    """Sequence lengths N (queries = keys)."""
    head_dims: tuple[int, ...] = (64, 128)
    """Head dims d."""
    dtypes: tuple[str, ...] = ("float16", "bfloat16")
    """Input dtypes (names of torch dtypes)."""
    causal: tuple[bool, ...] = (False, True)
    """Causal masking settings."""
    providers: tuple[str, ...] = GPU_PROVIDERS
    """Implementations to time."""
    tokens: int = 16384
    """``batch * seq`` (batch = max(1, tokens // seq))."""
    model_dim: int = 2048
    """``heads * head_dim`` (heads = model_dim // head_dim)."""
    warmup: int = 3
    """Untimed calls before timing (the first compiles Triton kernels)."""
    repeat: int = 10
    """Timed calls; the median is reported."""
    out: str = "results/flash/bench_cuda.json"
    """Results file (JSON with provenance)."""
    device: str = "cuda"
    """``cuda`` or ``cpu``."""
    seed: int = 0
    """Seed of the random inputs."""


CPU_CONFIG = BenchConfig(
    seq_lens=(64, 128),
    head_dims=(32,),
    dtypes=("float32",),
    providers=CPU_PROVIDERS,
    tokens=128,
    model_dim=64,
    warmup=1,
    repeat=2,
    out="results/flash/bench_cpu.json",
    device="cpu",
)


def attention_flops(batch: int, heads: int, seq: int, head_dim: int, causal: bool, mode: str) -> float:
    """FLOPs of exact attention: ``4 B H N^2 d`` forward (two matmuls), halved if causal; backward 2.5x forward."""
    fwd = 4.0 * batch * heads * seq * seq * head_dim * (0.5 if causal else 1.0)
    return fwd if mode == "fwd" else 3.5 * fwd


def _provider_fn(name: str, causal: bool):
    """The attention function ``f(q, k, v)`` of a provider."""
    import torch.nn.functional as F

    if name == "naive":
        from lib.nn.attention import scaled_dot_product_attention

        return lambda q, k, v: scaled_dot_product_attention(q, k, v, is_causal=causal)
    if name == "sdpa":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    if name == "sdpa_flash":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def fn(q, k, v):
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        return fn
    if name == "blockwise":
        from lib.flash.blockwise import flash_attention

        return lambda q, k, v: flash_attention(q, k, v, causal=causal)
    if name == "triton":
        from lib.flash.triton_kernels import triton_flash_attention

        return lambda q, k, v: triton_flash_attention(q, k, v, causal=causal)
    raise ValueError(f"unknown provider {name!r}; expected one of {sorted(set(GPU_PROVIDERS + CPU_PROVIDERS))}")


def _measure(cfg: BenchConfig, provider: str, batch: int, heads: int, seq: int, d: int, dtype, causal: bool):
    from lib.flash.memory import measure_peak_memory

    device = torch.device(cfg.device)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    q, k, v, do = (torch.randn(batch, heads, seq, d, generator=g, device=device, dtype=dtype) for _ in range(4))
    attn = _provider_fn(provider, causal)
    row: dict[str, Any] = {}
    for mode in ("fwd", "fwd_bwd"):
        try:
            if mode == "fwd":

                def call():
                    with torch.no_grad():
                        return attn(q, k, v)
            else:
                qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))

                def call(qg=qg, kg=kg, vg=vg):
                    return torch.autograd.grad(attn(qg, kg, vg), (qg, kg, vg), do)

            timing = benchmark(call, warmup=cfg.warmup, repeat=cfg.repeat, device=device)
            mem = measure_peak_memory(call, warmup=0, device=device)
            flops = attention_flops(batch, heads, seq, d, causal, mode)
            row[mode] = {
                "ms": timing.median * 1e3,
                "tflops": flops / timing.median / 1e12,
                "peak_mib": mem.peak_bytes / 2**20,
            }
        except Exception as err:  # record and go on: one failure must not lose the sweep
            row[mode] = {"error": f"{type(err).__name__}: {str(err)[:500]}"}
            traceback.print_exc(limit=2, file=sys.stderr)
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if provider == "triton" and "error" not in row.get("fwd", {}):  # accuracy check against torch's math
        try:
            with torch.no_grad():
                ref = torch.nn.functional.scaled_dot_product_attention(
                    q[:1].float(), k[:1].float(), v[:1].float(), is_causal=causal
                )
                row["max_abs_err_vs_fp32"] = (attn(q[:1], k[:1], v[:1]).float() - ref).abs().max().item()
        except Exception as err:
            row["max_abs_err_vs_fp32"] = f"{type(err).__name__}: {str(err)[:200]}"
    return row


def run(cfg: BenchConfig, command: str | None = None, verbose: bool = True) -> list[dict[str, Any]]:
    """Run the sweep of ``cfg``, rewrite ``cfg.out`` after each configuration, return the rows."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("cfg.device is 'cuda' but no CUDA device is available (use --cpu)")
    rows: list[dict[str, Any]] = []
    extra = {"config": dataclasses.asdict(cfg)}
    for dtype_name in cfg.dtypes:
        dtype = getattr(torch, dtype_name, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {dtype_name!r}")
        for d in cfg.head_dims:
            heads = max(1, cfg.model_dim // d)
            for causal in cfg.causal:
                for seq in cfg.seq_lens:
                    batch = max(1, cfg.tokens // seq)
                    for provider in cfg.providers:
                        row = dict(provider=provider, dtype=dtype_name, head_dim=d, causal=causal, seq=seq,
                                   batch=batch, heads=heads)  # fmt: skip
                        try:
                            row.update(_measure(cfg, provider, batch, heads, seq, d, dtype, causal))
                        except Exception as err:
                            row["error"] = f"{type(err).__name__}: {str(err)[:500]}"
                        rows.append(row)
                        if verbose:
                            print(_summary(row), flush=True)
                        save_results(cfg.out, {**extra, "rows": rows}, command)
    if "triton" in cfg.providers:
        try:
            from lib.flash.triton_kernels import launch_config

            extra["triton_launch_config"] = {
                f"{dt}-d{d}": launch_config(d, getattr(torch, dt)) for dt in cfg.dtypes for d in cfg.head_dims
            }
        except Exception as err:
            extra["triton_launch_config"] = f"{type(err).__name__}: {err}"
    save_results(cfg.out, {**extra, "rows": rows}, command)
    return rows


def _summary(row: dict[str, Any]) -> str:
    head = f"{row['provider']:>10} {row['dtype']:>8} d={row['head_dim']:<3} causal={row['causal']!s:<5}"
    head += f" N={row['seq']:<5}"
    parts = []
    for mode in ("fwd", "fwd_bwd"):
        r = row.get(mode, {"error": row.get("error", "?")})
        text = r["error"][:60] if "error" in r else f"{r['tflops']:7.2f} TFLOP/s {r['peak_mib']:9.1f} MiB"
        parts.append(f"{mode}: {text}")
    return head + "  " + "  ".join(parts)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m lib.flash.bench [--cpu] [--seq-lens ...] [--out PATH] ...``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="small CPU smoke sweep (default when no CUDA device)")
    p.add_argument("--seq-lens", type=int, nargs="+")
    p.add_argument("--head-dims", type=int, nargs="+")
    p.add_argument("--dtypes", nargs="+")
    p.add_argument("--causal", choices=("both", "yes", "no"), default="both")
    p.add_argument("--providers", nargs="+")
    p.add_argument("--tokens", type=int)
    p.add_argument("--repeat", type=int)
    p.add_argument("--out")
    args = p.parse_args(argv)
    cfg = CPU_CONFIG if (args.cpu or not torch.cuda.is_available()) else BenchConfig()
    changes = {
        name: tuple(val) if isinstance(val, list) else val
        for name, val in (("seq_lens", args.seq_lens), ("head_dims", args.head_dims), ("dtypes", args.dtypes),
                          ("providers", args.providers), ("tokens", args.tokens), ("repeat", args.repeat),
                          ("out", args.out))
        if val is not None
    }  # fmt: skip
    if args.causal != "both":
        changes["causal"] = (args.causal == "yes",)
    cfg = dataclasses.replace(cfg, **changes)
    command = "python -m lib.flash.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    run(cfg, command=command.strip())
    print(f"wrote {Path(cfg.out)}")


if __name__ == "__main__":
    main()


def throughput_table(
    rows: list[dict[str, Any]], dtype: str, head_dim: int, causal: bool, mode: str
) -> dict[str, dict[int, float]]:
    """``{provider: {seq: TFLOP/s}}`` of the successful rows of one (dtype, head_dim, causal) setting and mode."""
    if mode not in ("fwd", "fwd_bwd"):
        raise ValueError(f"mode must be 'fwd' or 'fwd_bwd', got {mode!r}")
    table: dict[str, dict[int, float]] = {}
    for row in rows:
        if (row.get("dtype"), row.get("head_dim"), row.get("causal")) != (dtype, head_dim, causal):
            continue
        result = row.get(mode, {})
        if "tflops" in result:
            table.setdefault(row["provider"], {})[row["seq"]] = result["tflops"]
    return table


def plot_throughput(ax, rows: list[dict[str, Any]], dtype: str, head_dim: int, causal: bool, mode: str) -> None:
    """TFLOP/s against sequence length, one line per provider, on a matplotlib ``ax``."""
    for provider, by_seq in throughput_table(rows, dtype, head_dim, causal, mode).items():
        seqs = sorted(by_seq)
        ax.plot(seqs, [by_seq[s] for s in seqs], marker="o", label=provider)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length N")
    ax.set_ylabel("TFLOP/s")
    ax.set_title(f"{mode}, {dtype}, d={head_dim}, {'causal' if causal else 'full'}")
    ax.legend()
