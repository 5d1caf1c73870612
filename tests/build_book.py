"""Strict build of the book into a temporary folder: ``python -m tests.build_book [--only NB] [--out DIR]``.

``-W -n --keep-going``: any warning (broken reference, citation, toc entry) fails. ``--only`` builds the
intro, the notation page, the given chapter(s) and the bibliography with a temporary table of contents, so one chapter
can be checked while others are being written. Exit status is jupyter-book's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(out: Path, toc: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(ROOT), "--path-output", str(out)]
    cmd += ["--warningiserror", "--nitpick", "--keep-going"]
    if toc is not None:
        cmd += ["--toc", str(toc)]
    env = {**os.environ, "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    return subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True, env=env)


def only_toc(notebooks: list[str]) -> str:
    lines = ["format: jb-book", "root: intro", "parts:", "  - caption: Only", "    chapters:"]
    for nb in ["chapters/running", "notation", *notebooks, "bibliography"]:
        lines.append(f"      - file: {Path(nb).with_suffix('').as_posix()}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", default=None, help="chapter files to build (default: the whole toc)")
    parser.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="book-"))
    toc = None
    if args.only:
        toc = ROOT / f".toc-{os.getpid()}.yml"
        toc.write_text(only_toc(args.only))
    try:
        proc = build(out, toc)
    finally:
        if toc is not None:
            toc.unlink(missing_ok=True)
    sys.stdout.write(proc.stdout[-6000:])
    sys.stderr.write(proc.stderr[-6000:])
    print(f"\nbuilt into {out / '_build' / 'html'} (exit {proc.returncode})")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
