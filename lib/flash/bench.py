"""Benchmark: forward and forward+backward TFLOP/s and peak memory of naive attention, torch SDPA and our kernels.

Run ``python -m lib.flash.bench`` (``--help`` for options). On a CUDA machine it sweeps sequence lengths 512 to
16384, head dims 64 and 128, causal and not, FP16 and BF16, with ``batch * seq = 16384`` tokens and
``heads * head_dim = 2048`` (the FlashAttention-2 paper's setting) and writes ``results/flash/bench_cuda.json``.
The headline configurations run first (FP16, d = 128, N = 4096 and 8192, full and causal), then the rest of the
sweep in order of importance; ``--max-seconds`` stops starting new configurations after a deadline. Every
configuration is wrapped: one that fails (out of memory, a compile error) is recorded with its error and the sweep
goes on; the file is rewritten after every configuration, so an interrupted run still leaves its results.
``--dry`` runs the same code path on the CPU at tiny sizes in seconds (Triton through its interpreter); ``make
test`` runs it. Each row records the Triton launch configuration that actually ran (autotuned on CUDA) and the
SDPA backend torch actually chose. Chapter: "FlashAttention in three layers".

Glossary
--------
provider   ``naive`` (lib.nn.attention), ``sdpa`` (torch's choice of backend), ``sdpa_flash`` (torch's FlashAttention-2
           backend forced, CUDA), ``triton`` (lib.flash.triton_kernels, deterministic backward), ``triton_atomic``
           (same forward, FA-2's atomic-dQ backward), ``blockwise`` (lib.flash.blockwise, CPU)
flops      forward ``4 B H N^2 d`` (halved when causal); forward+backward 3.5 times that (backward = 2.5 forward)
inner      calls timed back to back between one pair of CUDA events (one sample = their mean)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lib.utils import benchmark, save_results

GPU_PROVIDERS = ("naive", "sdpa", "sdpa_flash", "triton", "triton_atomic")
CPU_PROVIDERS = ("naive", "sdpa", "blockwise", "triton")
HEADLINE = ("float16", 128, (4096, 8192))
"""(dtype, head dim, sequence lengths) of the configurations run first and summarised."""


@dataclass(frozen=True)
class BenchConfig:
    """One sweep of :func:`run`."""

    seq_lens: tuple[int, ...] = (512, 1024, 2048, 4096, 8192, 16384)
    """Sequence lengths N (queries = keys)."""
    head_dims: tuple[int, ...] = (128, 64)
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
    """Untimed calls before timing (the first compiles and autotunes the Triton kernels)."""
    repeat: int = 10
    """Timed samples; the median is reported."""
    sample_seconds: float = 0.02
    """Target duration of one sample: ``inner`` = this / (time of one call), clipped to [1, max_inner]."""
    max_inner: int = 50
    """Largest number of back-to-back calls per sample."""
    max_seconds: float = math.inf
    """No new configuration starts after this many seconds (the rest are listed as skipped)."""
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
    max_inner=1,
    out="results/flash/bench_cpu.json",
    device="cpu",
)

DRY_CONFIG = dataclasses.replace(
    CPU_CONFIG,
    seq_lens=(40,),
    head_dims=(16,),
    dtypes=("float32", "float16"),
    causal=(True,),
    providers=("naive", "sdpa", "triton", "triton_atomic"),
    tokens=40,
    model_dim=16,
    warmup=1,
    repeat=1,
    max_inner=2,
    out="results/flash/bench_dry.json",
)
"""``--dry``: the CUDA code path at tiny sizes on the CPU (seconds), for ``make gpu DRY=1`` and ``make test``."""


def attention_flops(batch: int, heads: int, seq: int, head_dim: int, causal: bool, mode: str) -> float:
    """FLOPs of exact attention: ``4 B H N^2 d`` forward (two matmuls), halved if causal; backward 2.5x forward."""
    fwd = 4.0 * batch * heads * seq * seq * head_dim * (0.5 if causal else 1.0)
    return fwd if mode == "fwd" else 3.5 * fwd


def sweep_order(cfg: BenchConfig) -> list[tuple[str, int, bool, int]]:
    """``(dtype, head_dim, causal, seq)`` in the order run: the headline settings (FP16, d = 128, N = 4096 and 8192)
    first, then the rest of FP16 d = 128, then the other head dims and dtypes in ``cfg`` order."""
    order = [(dt, d, c, n) for dt in cfg.dtypes for d in cfg.head_dims for c in cfg.causal for n in cfg.seq_lens]
    h_dtype, h_dim, h_seqs = HEADLINE

    def rank(item):
        dt, d, c, n = item
        same = dt == h_dtype and d == h_dim
        return (0 if same and n in h_seqs else 1 if same else 2, order.index(item))

    return sorted(order, key=rank)


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
    if name in ("triton", "triton_atomic"):
        from lib.flash.triton_kernels import triton_flash_attention

        atomic = name == "triton_atomic"
        return lambda q, k, v: triton_flash_attention(q, k, v, causal=causal, atomic_dq=atomic)
    raise ValueError(f"unknown provider {name!r}; expected one of {sorted(set(GPU_PROVIDERS + CPU_PROVIDERS))}")


def sdpa_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> str:
    """The backend ``torch.nn.functional.scaled_dot_product_attention`` chooses for these inputs (its own dispatch
    function, ``torch._fused_sdp_choice``): ``FLASH_ATTENTION``, ``EFFICIENT_ATTENTION``, ``CUDNN_ATTENTION``,
    ``MATH``..., or ``unknown``."""
    from torch.nn.attention import SDPBackend

    try:
        return SDPBackend(torch._fused_sdp_choice(q, k, v, None, 0.0, causal)).name
    except Exception:
        return "unknown"


def _inner(call, cfg: BenchConfig, device: torch.device) -> int:
    """How many back-to-back calls make one sample of about ``cfg.sample_seconds``."""
    if cfg.max_inner <= 1:
        return 1
    t = benchmark(call, warmup=0, repeat=1, device=device).median
    return int(min(cfg.max_inner, max(1, round(cfg.sample_seconds / max(t, 1e-7)))))


def _measure(cfg: BenchConfig, provider: str, batch: int, heads: int, seq: int, d: int, dtype, causal: bool):
    from lib.flash.memory import measure_peak_memory

    device = torch.device(cfg.device)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    q, k, v, do = (torch.randn(batch, heads, seq, d, generator=g, device=device, dtype=dtype) for _ in range(4))
    attn = _provider_fn(provider, causal)
    row: dict[str, Any] = {}
    modes = ("fwd_bwd",) if provider == "triton_atomic" else ("fwd", "fwd_bwd")  # its forward is triton's
    for mode in modes:
        try:
            if mode == "fwd":

                def call():
                    with torch.no_grad():
                        return attn(q, k, v)
            else:
                qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))

                def call(qg=qg, kg=kg, vg=vg):
                    return torch.autograd.grad(attn(qg, kg, vg), (qg, kg, vg), do)

            for _ in range(cfg.warmup):  # compile, autotune, allocator warm-up
                call()
            inner = _inner(call, cfg, device)
            timing = benchmark(call, warmup=0, repeat=cfg.repeat, device=device, inner=inner)
            mem = measure_peak_memory(call, warmup=0, device=device)
            flops = attention_flops(batch, heads, seq, d, causal, mode)
            row[mode] = {
                "ms": timing.median * 1e3,
                "ms_min": min(timing.times) * 1e3,
                "ms_max": max(timing.times) * 1e3,
                "tflops": flops / timing.median / 1e12,
                "peak_mib": mem.peak_bytes / 2**20,
                "inner": inner,
            }
            if provider.startswith("triton"):
                from lib.flash.triton_kernels import last_launch

                row[mode]["launch"] = last_launch()
            if provider == "sdpa":
                row[mode]["backend"] = sdpa_backend(*((qg, kg, vg) if mode == "fwd_bwd" else (q, k, v)), causal)
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
    """Run the sweep of ``cfg`` (headline first), rewrite ``cfg.out`` after each configuration, return the rows."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("cfg.device is 'cuda' but no CUDA device is available (use --cpu or --dry)")
    for name in cfg.dtypes:
        if not isinstance(getattr(torch, name, None), torch.dtype):
            raise ValueError(f"unknown dtype {name!r}")
    for name in cfg.providers:
        _provider_fn(name, False)
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {"config": dataclasses.asdict(cfg), "complete": False, "skipped": []}
    if "triton" in cfg.providers or "triton_atomic" in cfg.providers:
        try:
            from lib.flash.triton_kernels import candidate_configs

            extra["triton_candidates"] = {
                f"{dt}-d{d}": {
                    k: [dataclasses.asdict(c) for c in v] for k, v in candidate_configs(d, getattr(torch, dt)).items()
                }
                for dt in cfg.dtypes
                for d in cfg.head_dims
            }
        except Exception as err:
            extra["triton_candidates"] = f"{type(err).__name__}: {err}"
    t0 = time.perf_counter()
    order = sweep_order(cfg)
    for i, (dtype_name, d, causal, seq) in enumerate(order):
        if time.perf_counter() - t0 > cfg.max_seconds:
            extra["skipped"] = [dict(dtype=a, head_dim=b, causal=c, seq=n) for a, b, c, n in order[i:]]
            if verbose:
                print(f"time budget of {cfg.max_seconds:.0f} s spent: {len(order) - i} configurations skipped")
            break
        heads = max(1, cfg.model_dim // d)
        batch = max(1, cfg.tokens // seq)
        for provider in cfg.providers:
            row = dict(provider=provider, dtype=dtype_name, head_dim=d, causal=causal, seq=seq, batch=batch,
                       heads=heads)  # fmt: skip
            try:
                row.update(_measure(cfg, provider, batch, heads, seq, d, getattr(torch, dtype_name), causal))
            except Exception as err:
                row["error"] = f"{type(err).__name__}: {str(err)[:500]}"
            rows.append(row)
            if verbose:
                print(_summary(row), flush=True)
            save_results(cfg.out, {**extra, "rows": rows}, command)
    else:
        extra["complete"] = True
    extra["seconds"] = time.perf_counter() - t0
    save_results(cfg.out, {**extra, "rows": rows}, command)
    return rows


def _summary(row: dict[str, Any]) -> str:
    head = f"{row['provider']:>13} {row['dtype']:>8} d={row['head_dim']:<3} causal={row['causal']!s:<5}"
    head += f" N={row['seq']:<5}"
    parts = []
    for mode in ("fwd", "fwd_bwd"):
        r = row.get(mode, {"error": row.get("error", "-")})
        text = r["error"][:60] if "error" in r else f"{r['tflops']:7.2f} TFLOP/s {r['peak_mib']:9.1f} MiB"
        parts.append(f"{mode}: {text}")
    return head + "  " + "  ".join(parts)


def summary_table(rows: list[dict[str, Any]], dtype: str = HEADLINE[0], head_dim: int = HEADLINE[1]) -> list[str]:
    """Text lines: TFLOP/s of every provider at ``(dtype, head_dim)``, one line per (causal, N, mode)."""
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    lines = [f"{'causal':>6} {'N':>6} {'mode':>8} " + " ".join(f"{p:>13}" for p in providers)]
    for causal in (False, True):
        for mode in ("fwd", "fwd_bwd"):
            table = throughput_table(rows, dtype, head_dim, causal, mode)
            for n in sorted({n for t in table.values() for n in t}):
                cells = [f"{table[p][n]:13.4g}" if n in table.get(p, {}) else f"{'-':>13}" for p in providers]
                lines.append(f"{causal!s:>6} {n:>6} {mode:>8} " + " ".join(cells))
    return lines


def main(argv: list[str] | None = None) -> Path:
    """Command line: ``python -m lib.flash.bench [--cpu | --dry] [--seq-lens ...] [--out PATH] ...``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="small CPU smoke sweep (default when no CUDA device)")
    p.add_argument("--dry", action="store_true", help="the CUDA code path at tiny sizes on the CPU, in seconds")
    p.add_argument("--seq-lens", type=int, nargs="+")
    p.add_argument("--head-dims", type=int, nargs="+")
    p.add_argument("--dtypes", nargs="+")
    p.add_argument("--causal", choices=("both", "yes", "no"), default="both")
    p.add_argument("--providers", nargs="+")
    p.add_argument("--tokens", type=int)
    p.add_argument("--repeat", type=int)
    p.add_argument("--max-seconds", type=float, help="start no new configuration after this many seconds")
    p.add_argument("--out")
    args = p.parse_args(argv)
    if args.dry:
        cfg = DRY_CONFIG
    elif args.cpu or not torch.cuda.is_available():
        cfg = CPU_CONFIG
    else:
        cfg = BenchConfig()
    changes = {
        name: tuple(val) if isinstance(val, list) else val
        for name, val in (("seq_lens", args.seq_lens), ("head_dims", args.head_dims), ("dtypes", args.dtypes),
                          ("providers", args.providers), ("tokens", args.tokens), ("repeat", args.repeat),
                          ("max_seconds", args.max_seconds), ("out", args.out))
        if val is not None
    }  # fmt: skip
    if args.causal != "both":
        changes["causal"] = (args.causal == "yes",)
    cfg = dataclasses.replace(cfg, **changes)
    command = "python -m lib.flash.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    rows = run(cfg, command=command.strip())
    print(
        "\n".join(summary_table(rows, *(HEADLINE[:2] if cfg.device == "cuda" else (cfg.dtypes[0], cfg.head_dims[0]))))
    )
    print(f"wrote {Path(cfg.out)}")
    return Path(cfg.out)


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


TARGETS = {"fwd": 0.9, "fwd_bwd": 0.7}
"""The chapter's bar for our kernel: throughput / SDPA's FlashAttention-2 backend, FP16, d = 128, N >= 4096."""


def headline_ratios(rows: list[dict[str, Any]], causal: bool = False) -> dict[str, dict[int, float]]:
    """``{mode: {N: triton / sdpa_flash TFLOP/s}}`` at the headline dtype and head dim, ``N >= 4096``; mode
    ``"atomic_vs_deterministic"`` holds ``triton_atomic / triton`` forward+backward throughput."""
    dtype, d, _ = HEADLINE
    out: dict[str, dict[int, float]] = {}
    for mode in ("fwd", "fwd_bwd"):
        t = throughput_table(rows, dtype, d, causal, mode)
        ours, ref = t.get("triton", {}), t.get("sdpa_flash", {})
        out[mode] = {n: ours[n] / ref[n] for n in sorted(ours) if n in ref and n >= 4096}
    t = throughput_table(rows, dtype, d, causal, "fwd_bwd")
    atomic, det = t.get("triton_atomic", {}), t.get("triton", {})
    out["atomic_vs_deterministic"] = {n: atomic[n] / det[n] for n in sorted(atomic) if n in det}
    return out


def gpu_report(path: str | Path) -> list[str]:
    """The chapter's GPU paragraph as text lines, read from a results file of :func:`run`; "not measured yet" when
    the file does not exist."""
    from lib.utils import load_results

    path = Path(path)
    if not path.exists():
        return [f"GPU results: not measured yet (no {path.name}; run `make gpu` on a CUDA machine)"]
    payload = load_results(path)
    prov, res = payload["provenance"], payload["results"]
    rows = res["rows"]
    lines = [
        f"measured on {prov.get('gpu', prov.get('device'))} (driver {prov.get('driver')}, CUDA {prov.get('cuda')}, "
        f"torch {prov.get('torch')}, triton {prov.get('triton')}, commit {prov.get('git_commit')}) "
        f"on {prov.get('date')}: {prov.get('command')}",
        f"{len(rows)} rows, {len(res.get('skipped', []))} configurations skipped by the time budget",
        f"TFLOP/s, {HEADLINE[0]}, d = {HEADLINE[1]}:",
        *summary_table(rows),
    ]
    for causal in (False, True):
        ratios = headline_ratios(rows, causal)
        for mode, bar in TARGETS.items():
            r = ratios[mode]
            verdict = "no data" if not r else ("met" if min(r.values()) >= bar else "NOT met")
            text = ", ".join(f"N={n}: {x:.2f}" for n, x in r.items())
            lines.append(f"{'causal' if causal else 'full'} {mode}: triton / sdpa_flash {text} (bar {bar}: {verdict})")
        r = ratios["atomic_vs_deterministic"]
        lines.append(f"{'causal' if causal else 'full'} fwd_bwd: atomic-dQ / deterministic backward "
                     + (", ".join(f"N={n}: {x:.2f}" for n, x in r.items()) or "no data"))  # fmt: skip
    for row in rows:
        if (row["dtype"], row["head_dim"], row["seq"]) == (HEADLINE[0], HEADLINE[1], HEADLINE[2][0]):
            if row["provider"] == "sdpa" and "backend" in row.get("fwd", {}):
                lines.append(f"causal={row['causal']}: torch SDPA chose {row['fwd']['backend']} (forward)")
            if row["provider"] == "triton" and "launch" in row.get("fwd_bwd", {}):
                launch = row["fwd_bwd"]["launch"]
                lines.append(f"causal={row['causal']}: triton ran fwd {launch['fwd']['config']}, "
                             f"bwd {launch['bwd']['config']} ({launch['fwd']['source']})")  # fmt: skip
    return lines


if __name__ == "__main__":
    main()
