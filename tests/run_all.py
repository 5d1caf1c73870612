"""Everything ``make test`` runs, in order, with a summary: ``python -m tests.run_all``.

1. ruff (lint and format check) over ``lib/`` and ``tests/``;
2. pytest unit tests of lib, with a coverage report of ``lib`` (printed at the end), and the CPU dry run of
   ``make gpu`` (``python -m tests.run_gpu --dry``: the GPU run's steps at tiny sizes);
3. nbval, strict mode, over every notebook in ``chapters/`` (one run per notebook, timed; a notebook
   over ``MAX_NOTEBOOK_SECONDS`` fails);
4. a strict book build (``-W -n --keep-going``) into a temporary folder;
5. the real-browser check of that build (headless Chromium; skips with a message where absent).

Every step runs even when an earlier one failed, so one CI run reports everything; the exit status is
non-zero if any step failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MAX_NOTEBOOK_SECONDS = 300
BUDGET_SECONDS = 120  # BOOK.md rule 4: each chapter's budget (reported, not enforced here)


def run(name: str, cmd: list[str], env: dict[str, str] | None = None) -> tuple[bool, float]:
    print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - t0
    ok = proc.returncode == 0
    print(f"=== {name}: {'ok' if ok else f'FAILED (exit {proc.returncode})'} in {seconds:.1f} s", flush=True)
    return ok, seconds


def notebooks() -> list[Path]:
    return sorted(p for p in (ROOT / "chapters").glob("**/*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def main() -> int:
    env = {"TQDM_DISABLE": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    os.environ.pop("MPLBACKEND", None)  # notebooks use the inline backend, as when their outputs were stored
    os.environ.update(env)
    results: list[tuple[str, bool, float]] = []
    pytest = [str(BIN / "python"), "-m", "pytest"]

    for name, cmd in [
        ("ruff check", [str(BIN / "ruff"), "check", "lib", "tests"]),
        ("ruff format", [str(BIN / "ruff"), "format", "--check", "lib", "tests"]),
        (
            "unit tests",
            [*pytest, "tests", "-q", "--ignore=tests/test_book_browser.py", "--cov=lib", "--cov-report="],
        ),
        ("make gpu dry run", [str(BIN / "python"), "-m", "tests.run_gpu", "--dry"]),
    ]:
        ok, s = run(name, cmd)
        results.append((name, ok, s))

    nb_times: list[tuple[str, bool, float]] = []
    for nb in notebooks():
        rel = nb.relative_to(ROOT).as_posix()
        cmd = [*pytest, "--nbval", rel, "--nbval-current-env", "--nbval-cell-timeout=900",
               "--nbval-sanitize-with", "tests/nbval_sanitize.cfg", "-q"]  # fmt: skip
        ok, s = run(f"nbval {rel}", cmd)
        ok = ok and s <= MAX_NOTEBOOK_SECONDS
        nb_times.append((rel, ok, s))
        results.append((f"nbval {rel}", ok, s))

    out = Path(tempfile.mkdtemp(prefix="book-strict-"))
    ok, s = run("strict book build", [str(BIN / "python"), "-m", "tests.build_book", "--out", str(out)])
    results.append(("strict book build", ok, s))
    html = out / "_build" / "html"
    ok, s = run("browser check", [*pytest, "tests/test_book_browser.py", "-q", "-rs"], env={"BOOK_HTML": str(html)})
    results.append(("browser check", ok, s))

    print("\nNotebook execution times under nbval (2-core budget per chapter: "
          f"{BUDGET_SECONDS} s; fails over {MAX_NOTEBOOK_SECONDS} s):")  # fmt: skip
    for rel, ok, s in nb_times:
        print(f"  {rel:<44} {s:7.1f} s  {'ok' if ok else 'FAILED'}")
    print("\nCoverage of lib by the unit tests:", flush=True)
    subprocess.run([str(BIN / "python"), "-m", "coverage", "report", "--skip-empty"], cwd=ROOT)
    print("\nSummary:")
    for name, ok, s in results:
        print(f"  {'ok    ' if ok else 'FAILED'} {name} ({s:.1f} s)")
    failed = [name for name, ok, _ in results if not ok]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
