"""Every GPU measurement of the book in one unattended command: ``make gpu`` (``python -m tests.run_gpu``).

On a CUDA machine, in order, each step in its own process with a hard time limit, the whole under
``--budget`` seconds (default 450, inside the 8 minutes the book allows for it):

1. the CUDA-only tests, ``tests/**/test_*_cuda.py`` (each skips cleanly without CUDA), as one pytest process per
   shard of :data:`CUDA_TEST_SHARDS`, the shards in parallel: most of their time is Triton compiling kernels,
   single-threaded CPU work, and a GPU machine has cores to spare (the FlashAttention tests compile about 75
   kernels, most of them the large backward kernel: minutes in one process, about 12 compilations per shard);
2. the FlashAttention benchmark, ``python -m lib.flash.bench`` -> ``results/flash/bench_cuda.json`` (headline
   configuration first: FP16, d = 128, N = 4096 and 8192);
3. the mixed-precision benchmark, ``python -m lib.precision.bench`` -> ``results/precision/bench_cuda.json``;
4. the SSM scan benchmark, ``python -m lib.ssm.bench`` -> ``results/ssm/scan_cuda.json``, when
   ``lib/ssm/bench.py`` exists (reported as skipped otherwise).

Each benchmark rewrites its results file (with provenance: GPU, driver, clocks, CUDA/torch/triton versions, date,
command, git commit) after every configuration, so a step cut short by its time limit keeps its most important
rows. A summary table closes the run. Commit the results files and run ``make execute`` to show them in the book.

``--dry`` (``make gpu DRY=1``) runs the same steps on the CPU at tiny sizes (Triton through its interpreter),
writing into a temporary folder instead of ``results/``: a check, in a minute or two, that the GPU run will not
fail on a typo. ``make test`` runs it. This file lives in ``tests/`` next to ``run_all.py`` because, like it, it is an
orchestrator of test and measurement commands, not library code.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
TORCH_CUDA_INSTALL = (
    '.venv/bin/pip install "torch==2.13.0+cu128" -c constraints.txt --index-url https://download.pytorch.org/whl/cu128'
)
"""The one extra command on a GPU machine whose venv has the CPU build of torch (the same release, CUDA 12.8 build;
pick the index that matches the driver). The explicit local version ``+cu128`` matters: ``torch==2.13.0`` alone is
already satisfied by ``2.13.0+cpu``."""


CUDA_TEST_SHARDS = (
    "fp16 and d64",
    "bf16 and d64",
    "fp16 and d128 and causal",
    "fp16 and d128 and not causal",
    "bf16 and d128 and causal",
    "bf16 and d128 and not causal",
    "not ((fp16 or bf16) and (d64 or d128))",
)
"""``pytest -k`` expressions that partition the CUDA tests (the last is the complement of the others, so every test
runs exactly once), on the test ids' ``fp16``/``bf16``, ``d64``/``d128`` and ``causal``, so that the processes compile
disjoint sets of kernels (``d = 128`` has two candidates per kernel, hence twice the kernels, split by masking).
Each compiled kernel lands in Triton's on-disk cache, where the benchmark step finds the same kernels (they do not
specialise on the head count or the lengths)."""


@dataclass
class Step:
    """One command of the run."""

    name: str
    cmd: list[str]
    limit: float
    """Hard time limit, seconds (the process is killed after it)."""
    out: Path | None = None
    """Results file it writes, if any."""
    status: str = "not run"
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    shards: list[list[str]] = field(default_factory=list)
    """Commands run in parallel instead of ``cmd`` (each a shard of the step), when not empty."""


def cuda_tests() -> list[str]:
    """The CUDA-only test files, ``tests/**/test_*_cuda.py``, sorted."""
    return sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").glob("**/test_*_cuda.py"))


def check_environment(dry: bool) -> str | None:
    """None when the run can go ahead, else the reason it cannot (with the fix)."""
    if dry:
        return None
    import torch

    if torch.cuda.is_available():
        return None
    has_gpu = (
        shutil.which("nvidia-smi") is not None
        and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
    )
    if has_gpu and torch.version.cuda is None:
        return (
            f"this venv has the CPU build of torch ({torch.__version__}) but the machine has an NVIDIA GPU.\n"
            f"Install the CUDA build of the same release once, then run make gpu again:\n    {TORCH_CUDA_INSTALL}"
        )
    if has_gpu:
        return f"nvidia-smi sees a GPU but torch {torch.__version__} (CUDA {torch.version.cuda}) cannot use it"
    return "no CUDA device: make gpu needs an NVIDIA GPU (make gpu DRY=1 runs the CPU dry run of the same steps)"


def plan(dry: bool, budget: float, out_dir: Path) -> list[Step]:
    """The steps and their time limits (within ``budget`` seconds in all)."""
    tests = cuda_tests()
    pytest = [PY, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *tests]
    steps = [Step("CUDA tests", pytest, 0.35 * budget, shards=[[*pytest, "-k", k] for k in CUDA_TEST_SHARDS])]

    def res(chapter: str, name: str) -> Path:
        return out_dir / chapter / name

    flash = res("flash", "bench_dry.json" if dry else "bench_cuda.json")
    limit = 0.37 * budget
    cmd = [PY, "-m", "lib.flash.bench", *(["--dry"] if dry else []), "--max-seconds", f"{limit - 45:.0f}"]
    steps.append(Step("FlashAttention benchmark", [*cmd, "--out", str(flash)], limit, flash))
    prec = res("precision", "bench_dry.json" if dry else "bench_cuda.json")
    limit = 0.10 * budget
    cmd = [PY, "-m", "lib.precision.bench", *(["--dry"] if dry else ["--device", "cuda"])]
    steps.append(Step("mixed-precision benchmark", [*cmd, "--max-seconds", f"{limit - 20:.0f}", "--out", str(prec)],
                      limit, prec))  # fmt: skip
    ssm_src = ROOT / "lib" / "ssm" / "bench.py"
    ssm = res("ssm", "scan_dry.json" if dry else "scan_cuda.json")
    step = Step(
        "SSM scan benchmark", [PY, "-m", "lib.ssm.bench", "--device", "cpu" if dry else "cuda"], 0.18 * budget, ssm
    )
    if not ssm_src.exists():
        step.status = "skipped"
        step.notes.append("lib/ssm/bench.py does not exist yet")
    else:
        text = ssm_src.read_text()  # its options, read rather than imported (the step runs in its own process)
        if dry and "--dry" in text:
            step.cmd.append("--dry")
        elif dry and '"--L"' in text:  # no dry mode: a tiny length on the CPU instead
            step.cmd += ["--L", "64", "--repeat", "1"]
        elif dry:
            step.status = "skipped"
            step.notes.append("lib.ssm.bench has no --dry option")
        if "--max-seconds" in text:
            step.cmd += ["--max-seconds", f"{step.limit - 20:.0f}"]
        step.cmd += ["--out", str(ssm)]
    steps.append(step)
    return steps


def _run_shards(step: Step, env: dict[str, str], limit: float, dry: bool) -> str:
    """Run ``step.shards`` in parallel, each in its own process group with its output in a log file; kill what is
    still running after ``limit`` seconds; print the logs in order; return the step's status."""
    procs = []
    with tempfile.TemporaryDirectory(prefix="book-gpu-shards-") as tmp:
        for i, cmd in enumerate(step.shards):
            log = open(Path(tmp) / f"shard{i}.log", "w+")  # noqa: SIM115 (closed below)
            procs.append((cmd, log, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                     start_new_session=True)))  # fmt: skip
        end = time.monotonic() + limit
        codes = []
        for cmd, log, proc in procs:
            try:
                codes.append(proc.wait(timeout=max(0.1, end - time.monotonic())))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)  # the shard and any compiler subprocess it started
                proc.wait()
                codes.append(None)
            log.seek(0)
            print(f"--- shard {' '.join(cmd[cmd.index('-k') :]) if '-k' in cmd else ''}: exit {codes[-1]}")
            print(log.read().rstrip(), flush=True)
            log.close()
    if None in codes:
        return f"TIME LIMIT ({codes.count(None)} of {len(codes)} shards killed)"
    bad = [c for c in codes if c not in (0, 5)]  # pytest: 5 = no test selected in this shard
    if bad:
        return f"FAILED (exit {bad[0]})"
    if 0 not in codes:  # nothing ran at all: expected only on a machine without CUDA (every module skipped)
        return "ok (all skipped)" if dry else "FAILED (no test ran)"
    return "ok"


def run_step(step: Step, env: dict[str, str], deadline: float, dry: bool = False) -> None:
    limit = max(1.0, min(step.limit, deadline - time.monotonic()))
    print(f"\n=== {step.name} (limit {limit:.0f} s): {' '.join(step.cmd)}", flush=True)
    t0 = time.monotonic()
    if step.shards:
        print(f"    in {len(step.shards)} parallel shards: -k " + " | -k ".join(repr(c[-1]) for c in step.shards))
        step.status = _run_shards(step, env, limit, dry)
        step.seconds = time.monotonic() - t0
        print(f"=== {step.name}: {step.status} in {step.seconds:.1f} s", flush=True)
        return
    try:
        proc = subprocess.run(step.cmd, cwd=ROOT, env=env, timeout=limit)
        step.status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
        if dry and step.name == "CUDA tests" and proc.returncode == 5:  # pytest: every module skipped (no CUDA)
            step.status = "ok (all skipped)"
    except subprocess.TimeoutExpired:
        step.status = "TIME LIMIT (killed)"
    step.seconds = time.monotonic() - t0
    print(f"=== {step.name}: {step.status} in {step.seconds:.1f} s", flush=True)


def _rows_note(path: Path) -> str:
    try:
        results = json.loads(path.read_text())["results"]
    except Exception as err:
        return f"unreadable ({type(err).__name__})"
    if isinstance(results, dict) and "rows" in results:
        n_err = sum(1 for r in results["rows"] if any("error" in (r.get(m) or {}) for m in ("fwd", "fwd_bwd")))
        return f"{len(results['rows'])} rows ({n_err} with errors), {len(results.get('skipped', []))} skipped"
    if isinstance(results, dict):
        return ", ".join(f"{k}: {len(v)}" for k, v in results.items() if isinstance(v, list))
    return "written"


def summary(steps: list[Step], total: float) -> list[str]:
    """The closing table: each step's status and time, the results files, the FlashAttention headline."""
    lines = [f"{'step':<28} {'status':<22} {'time':>7}  results"]
    for s in steps:
        res = "-"
        if s.out is not None and s.out.exists():
            res = f"{s.out.relative_to(ROOT) if s.out.is_relative_to(ROOT) else s.out}: {_rows_note(s.out)}"
        lines.append(f"{s.name:<28} {s.status:<22} {s.seconds:6.1f}s  {res}")
        lines += [f"{'':<28} note: {n}" for n in s.notes]
    lines.append(f"{'total':<28} {'':<22} {total:6.1f}s")
    flash = steps[1]
    if flash.out is not None and flash.out.exists():
        try:
            from lib.flash.bench import HEADLINE, summary_table

            payload = json.loads(flash.out.read_text())
            rows = payload["results"]["rows"]
            prov = payload["provenance"]
            dtype, d = HEADLINE[:2] if prov.get("device") == "cuda" else (rows[0]["dtype"], rows[0]["head_dim"])
            lines += ["", f"FlashAttention TFLOP/s, {dtype}, d = {d} ({prov.get('gpu', prov.get('device'))}):"]
            lines += summary_table(rows, dtype, d)
        except Exception as err:
            lines.append(f"(no FlashAttention summary: {type(err).__name__}: {err})")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry", action="store_true", help="CPU dry run at tiny sizes into a temporary folder")
    p.add_argument("--budget", type=float, default=450.0, help="seconds for the whole run (default 450)")
    args = p.parse_args(argv)
    if not args.budget > 0:
        raise ValueError(f"--budget must be positive, got {args.budget}")
    t0 = time.monotonic()
    reason = check_environment(args.dry)
    if reason is not None:
        print(f"make gpu: {reason}", file=sys.stderr)
        return 2
    out_dir = Path(tempfile.mkdtemp(prefix="book-gpu-dry-")) if args.dry else ROOT / "results"
    for chapter in ("flash", "precision", "ssm"):
        (out_dir / chapter).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    if args.dry:  # hide any GPU: every module then takes its CPU path (Triton through the interpreter)
        env.update(CUDA_VISIBLE_DEVICES="", BOOK_THREADS=env.get("BOOK_THREADS", "1"))
    else:  # compiled kernels, whatever the caller's environment says
        env.pop("TRITON_INTERPRET", None)
    steps = plan(args.dry, args.budget, out_dir)
    mode = " (dry run, CPU)" if args.dry else ""
    print(f"make gpu{mode}: {len(cuda_tests())} CUDA test files, budget {args.budget:.0f} s")
    deadline = t0 + args.budget
    for step in steps:
        if step.status == "skipped":
            print(f"\n=== {step.name}: skipped ({'; '.join(step.notes)})", flush=True)
            continue
        if time.monotonic() > deadline - 5:
            step.status = "skipped"
            step.notes.append("no time left in the budget")
            continue
        run_step(step, env, deadline, args.dry)
    lines = summary(steps, time.monotonic() - t0)
    print("\nSummary:\n" + "\n".join(lines))
    if args.dry:
        shutil.rmtree(out_dir, ignore_errors=True)
    else:
        print("\nNext: git add results/ && make execute (the chapters read these files).")
    failed = [s for s in steps if s.status.startswith("FAILED")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
