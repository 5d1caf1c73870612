"""Real-browser check of the built book: headless Chromium opens every page offline.

For each HTML page of the build it asserts that the page is not empty, that every image loaded
(``naturalWidth > 0``), that MathJax typeset the math (``mjx-container`` present where the page has
math) and that no raw TeX delimiter is left in the visible text. The pages are served from
``127.0.0.1`` and inspected from a same-origin harness page, so the check needs no network.

``BOOK_HTML`` names the built site (``make test`` sets it); without it the book is built first.
Skips, saying how to install it, where Chromium is absent.
"""

from __future__ import annotations

import functools
import html
import http.server
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next((shutil.which(c) for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)

HARNESS = """<!doctype html><html><body><pre id="result">pending</pre><script>
const pages = %(pages)s;
const out = [];
const sleep = ms => new Promise(r => setTimeout(r, ms));
async function check(page) {
  const frame = document.createElement('iframe');
  frame.style.width = '1200px'; frame.style.height = '900px';
  const loaded = new Promise(r => frame.onload = r);
  frame.src = page; document.body.appendChild(frame);
  await loaded;
  const w = frame.contentWindow, d = frame.contentDocument;
  if (w.MathJax && w.MathJax.startup && w.MathJax.startup.promise) {
    try { await w.MathJax.startup.promise; } catch (e) {}
  }
  for (let i = 0; i < 50 && [...d.images].some(im => !im.complete); i++) await sleep(100);
  const main = d.querySelector('main') || d.body;
  const clone = main.cloneNode(true);
  clone.querySelectorAll('mjx-container, script, style, pre, code, .highlight').forEach(e => e.remove());
  const r = {
    page: page,
    text_chars: (main.innerText || '').trim().length,
    images: d.images.length,
    broken_images: [...d.images].filter(im => !(im.complete && im.naturalWidth > 0)).map(im => im.src),
    mathjax_loaded: !!(w.MathJax && w.MathJax.startup),
    math_nodes: d.querySelectorAll('.math, mjx-container').length,
    mjx: d.querySelectorAll('mjx-container').length,
    unrendered: [...d.querySelectorAll('.math')].filter(e => !e.querySelector('mjx-container')).length,
    raw_tex: (clone.innerText.match(/\\$\\$|\\\\\\(|\\\\\\)|\\\\\\[|\\\\\\]|\\\\begin\\{/g) || []).length,
  };
  frame.remove();
  return r;
}
(async () => {
  for (const p of pages) { try { out.push(await check(p)); } catch (e) { out.push({page: p, error: String(e)}); } }
  document.getElementById('result').textContent = 'RESULT' + JSON.stringify(out) + 'END';
})();
</script></body></html>"""


@pytest.fixture(scope="module")
def site() -> Path:
    html = os.environ.get("BOOK_HTML")
    if html:
        path = Path(html)
        if not (path / "index.html").exists():
            pytest.fail(f"BOOK_HTML={html} holds no built book (index.html missing)")
        return path
    out = Path(tempfile.mkdtemp(prefix="book-browser-"))
    proc = subprocess.run([os.sys.executable, "-m", "tests.build_book", "--out", str(out)], cwd=ROOT)
    if proc.returncode != 0:
        pytest.fail("the strict book build failed")
    return out / "_build" / "html"


def _serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.mark.browser
def test_every_page_renders(site: Path) -> None:
    if CHROMIUM is None:
        if os.environ.get("BOOK_REQUIRE_BROWSER"):
            pytest.fail("BOOK_REQUIRE_BROWSER is set but no chromium was found")
        pytest.skip("headless Chromium not found: install it with `sudo apt-get install chromium` (Debian/Ubuntu)")
    pages = sorted(
        p.relative_to(site).as_posix()
        for p in site.glob("**/*.html")
        if not any(part.startswith(("_", ".")) for part in p.relative_to(site).parts)
        and p.name not in ("search.html", "genindex.html")
        and 'http-equiv="refresh"' not in p.read_text(errors="replace").lower()[:2000]  # redirect stubs
    )
    assert "index.html" in pages or any(p.startswith("intro") for p in pages)
    harness = site / "_browser_check.html"
    harness.write_text(HARNESS % {"pages": json.dumps(["/" + p for p in pages])})
    server, base = _serve(site)
    try:
        with tempfile.TemporaryDirectory() as profile:
            cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   f"--user-data-dir={profile}", "--virtual-time-budget=120000", "--dump-dom",
                   f"{base}/_browser_check.html"]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    finally:
        server.shutdown()
        harness.unlink(missing_ok=True)
    match = re.search(r'<pre id="result">RESULT(.*?)END</pre>', proc.stdout, re.S)
    assert match, f"the harness did not finish; chromium said: {proc.stderr[-2000:]}"
    report = json.loads(html.unescape(match.group(1)))
    assert len(report) == len(pages)
    problems = []
    for r in report:
        if "error" in r:
            problems.append(f"{r['page']}: {r['error']}")
            continue
        if r["text_chars"] < 200:
            problems.append(f"{r['page']}: nearly empty ({r['text_chars']} characters)")
        if r["broken_images"]:
            problems.append(f"{r['page']}: images did not load: {r['broken_images'][:3]}")
        if r["math_nodes"] and not r["mjx"]:
            problems.append(f"{r['page']}: {r['math_nodes']} math nodes but MathJax rendered none")
        if r["unrendered"]:
            problems.append(f"{r['page']}: {r['unrendered']} math elements left untypeset")
        if r["math_nodes"] and not r["mathjax_loaded"]:
            problems.append(f"{r['page']}: MathJax did not load")
        if r["raw_tex"]:
            problems.append(f"{r['page']}: {r['raw_tex']} raw TeX delimiters left in the text")
    print(json.dumps(report, indent=1)[:4000])
    assert not problems, "\n".join(problems)
    assert sum(r["mjx"] for r in report) > 0, "no page has rendered math at all"
