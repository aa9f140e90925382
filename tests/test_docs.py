"""`make docs` builds the site from the top-level _quarto.yml, with a page for every notebook."""
import contextlib, os, shutil, subprocess, sys
import pytest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def test_quarto_yml_is_the_top_level_file():
    link = ROOT / "nbs" / "_quarto.yml"
    assert link.is_symlink() and link.resolve() == (ROOT / "_quarto.yml").resolve()

def _git(*args)->str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout

@pytest.fixture(scope="module")
def site(tmp_path_factory):
    "The site, built once in a copy of the tracked files (never in the repository); the repository's status before and after."
    import shutil
    before = _git("status", "--porcelain")
    copy = tmp_path_factory.mktemp("site") / "repo"
    for f in _git("ls-files").splitlines():
        src, dst = ROOT / f, copy / f
        if not src.exists() and not src.is_symlink(): continue   # deleted in the working tree
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst, follow_symlinks=False)             # nbs/_quarto.yml stays a link to ../_quarto.yml
    r = subprocess.run([sys.executable, "tools/docs.py", "site"], cwd=copy, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return copy / "_docs", before, _git("status", "--porcelain")

@pytest.mark.xdist_group("site")
def test_site_has_a_page_per_notebook(site):
    "The site builds in a copy of the tracked files, never writing into the repository; every notebook gets a page."
    site, before, after = site
    assert after == before, "building the site changed the repository"
    nbs = sorted(p.stem for p in (ROOT / "nbs").glob("*.ipynb"))
    missing = [n for n in nbs if not (site / f"{n}.html").exists() and not (site / n / "index.html").exists()]
    assert not missing, f"no page for {missing}; site has {sorted(p.name for p in site.iterdir())[:20]}"
    page = (site / "10_lora.html").read_text()
    assert "Low-rank adaptation" in page and "peft-notes" in page   # the chapter, in the site's frame from _quarto.yml
    assert "LoraLayer" in page
    assert "Reparameterized PEFT" in (site / "index.html").read_text()   # the hand-written sidebar, by family
    pages = list(site.rglob("*.html"))
    cdn = [p.name for p in pages if "cdn.jsdelivr.net/npm/katex" in p.read_text()]
    assert not cdn, f"pages still load KaTeX from a CDN: {cdn[:5]}"
    assert (site / "site_libs" / "katex" / "katex.min.js").exists()

@pytest.mark.xdist_group("site")
def test_every_public_name_has_an_entry(site):
    "show_doc for every public function and class: each name in a module's __all__ has an anchored entry on some page."
    import importlib, inspect, pkgutil, re
    import peft_notes
    site = site[0]
    anchors = set()
    for p in site.rglob("*.html"): anchors |= set(re.findall(r'<h[34] id="([^"]+)" class="anchored"', p.read_text()))
    missing = []
    for m in pkgutil.walk_packages(peft_notes.__path__, "peft_notes."):
        if ".examples" in m.name: continue                          # the template's copy lives in the template chapter
        mod = importlib.import_module(m.name)
        for n in getattr(mod, "__all__", []):
            obj = getattr(mod, n)
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, "__module__", "") == m.name and n.lower() not in anchors:
                missing.append(f"{m.name}.{n}")
    assert not missing, f"{len(missing)} public names without an API entry: {missing[:20]}"

def test_displayed_cell_without_stored_output_is_caught(tmp_path):
    "The notebook runner fails a chapter whose displayed cell shows something when run but has no stored output."
    import json
    cell = lambda src, outs: {"cell_type": "code", "execution_count": None, "id": f"c{len(src)}", "metadata": {}, "outputs": outs, "source": src}
    shown = [{"output_type": "execute_result", "data": {"text/plain": "2"}, "metadata": {}, "execution_count": None}]
    def nb(cells):
        p = tmp_path / "t.ipynb"
        p.write_text(json.dumps({"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}))
        return subprocess.run([sys.executable, str(ROOT / "tests" / "_run_nb.py"), str(p), str(ROOT)], capture_output=True, text=True, timeout=300)
    r = nb([cell("x = 1", []), cell("x + 1", [])])
    assert r.returncode == 2 and "cell 1: ... x + 1" in r.stderr, r.stderr
    assert nb([cell("x = 1", []), cell("x + 1", shown)]).returncode == 0
    assert nb([cell("x = 1", []), cell("#| hide\nx + 1", [])]).returncode == 0     # a hidden check is not on the page
    assert nb([cell("x = 1", []), cell("x + 1;", [])]).returncode == 0             # nothing to show
    assert nb([cell("1/0", [])]).returncode == 1                                     # a failing cell is a failure, not a blank
    near = [{"output_type": "execute_result", "data": {"text/plain": "0.500"}, "metadata": {}, "execution_count": None}]
    assert nb([cell("0.52", near)]).returncode == 3                                  # a stored number that is not what the cell gives
    assert nb([cell("#| approx 0.05\n0.52", near)]).returncode == 0                 # ...within a trained result's stated tolerance
    assert nb([cell("#| approx 0.01\n0.52", near)]).returncode == 3
    slow = [cell("#| slow\n1/0", [])]
    assert nb(slow).returncode == 0                                                  # make test skips slow cells...
    import os
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "_run_nb.py"), str(tmp_path / "t.ipynb"), str(ROOT)], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "PEFT_NOTES_SLOW": "1"})
    assert r.returncode == 1                                                         # ...make slow runs them

def test_stored_numbers_compare_within_what_cpus_differ_by():
    "A stored float equals a fresh one within a unit of its last printed digit or 0.1% (CPUs sum in different orders); a real change is caught."
    import importlib.util
    spec = importlib.util.spec_from_file_location("_run_nb", ROOT / "tests" / "_run_nb.py"); run = importlib.util.module_from_spec(spec); spec.loader.exec_module(run)
    assert run.same_text("loss 4.481320", "loss 4.481258") and run.same_text("<td>1.7590</td>", "<td>1.7586</td>")   # seen between two machines
    assert run.same_text("0.794", "0.795") and not run.same_text("0.794", "0.792")                                   # three decimals: one unit
    assert not run.same_text("0.44", "0.38") and not run.same_text("loss 4.4813", "loss 4.4913")
    assert not run.same_text("'full': 'cdacbb81a97e'", "'full': '315624e82144'")                                   # text is compared as text
    assert run.same_text("0.736", "0.744", abs_tol=0.02) and not run.same_text("0.736", "0.764", abs_tol=0.02)      # `#| approx 0.02`: a trained result

def test_sidebar_lists_every_chapter_once():
    "The reading order is written by hand (custom_sidebar): every notebook is in it, once, and nothing else is."
    import re
    names = re.findall(r"^\s*- (\S+\.ipynb)\s*$", (ROOT / "nbs" / "sidebar.yml").read_text(), re.M)
    nbs = sorted(p.name for p in (ROOT / "nbs").glob("*.ipynb"))
    assert sorted(names) == nbs and len(names) == len(set(names)), (sorted(set(nbs) - set(names)), sorted(set(names) - set(nbs)))
    assert names[:2] == ["index.ipynb", "00_intro.ipynb"]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
QUIET = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]   # no call to the outside world: this machine's network is closed

@contextlib.contextmanager
def _serve(folder:Path):
    "The folder over HTTP on localhost, in a thread; yields its base address."
    import functools, http.server, threading
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a): pass
    handler = functools.partial(Quiet, directory=str(folder))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True); t.start()
    try: yield f"http://127.0.0.1:{srv.server_address[1]}/"
    finally: srv.shutdown(); srv.server_close()

# what a reader sees on each page: (page, text it must show, a table, a figure, an API entry)
PAGES = [("index.html", "peft-notes", True, False, False), ("10_lora.html", "Low-rank adaptation", True, True, True),
         ("00d_core_model.html", "get_peft_model", False, False, True)]

@pytest.mark.xdist_group("site")
def test_site_reads_in_a_browser(site):
    "Headless Chromium, no network: the index, a chapter and an API page load without console errors, typeset their maths, show a table (and the chapter a figure) at a laptop's width; screenshots kept in runs/browser/."
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"): pytest.fail("Chromium is missing: .ci/run installs Debian's chromium")
        pytest.skip("no Chromium on this machine (apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright
    site, _, _ = site
    shots = ROOT / "runs" / "browser"; shots.mkdir(parents=True, exist_ok=True)
    with _serve(site) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=QUIET)
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        errors, outside = [], []
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append(f"{r.url}: {r.failure}"))
        page.on("response", lambda r: r.status >= 400 and errors.append(f"{r.url}: HTTP {r.status}"))
        page.on("request", lambda r: r.url.startswith(("http:", "https:")) and not r.url.startswith(base) and outside.append(r.url))
        for name, text, table, figure, api in PAGES:
            errors.clear()
            page.goto(base + name, wait_until="load")
            page.wait_for_function("() => !document.querySelector('span.math') || document.querySelector('span.math .katex')", timeout=60_000)
            page.screenshot(path=str(shots / f"{Path(name).stem}.png"), full_page=False)
            assert not errors, f"{name}: console errors {errors[:5]}"
            assert text in page.inner_text("main"), f"{name}: {text!r} not on the page"
            raw = page.evaluate("() => [...document.querySelectorAll('span.math')].filter(s => /\\\\[\\[(]/.test(s.innerText)).length")
            assert raw == 0, f"{name}: {raw} equations still raw LaTeX"
            if table: assert page.locator("main table").count() > 0, f"{name}: no table"
            if api: assert page.locator("main h3.anchored + div.code-copy-outer-scaffold pre").count() > 0, f"{name}: no API entry (a show_doc signature)"
            if figure:
                assert page.evaluate("() => [...document.querySelectorAll('main img')].some(i => i.complete && i.naturalWidth > 100)"), f"{name}: no figure drawn"
            width = page.evaluate("() => document.querySelector('main').getBoundingClientRect().width")
            assert width >= 800, f"{name}: the text column is {width:.0f}px wide at 1366px"
            clipped = page.evaluate("() => { const edge = document.querySelector('main').getBoundingClientRect().right + 2;"
                                    " return [...document.querySelectorAll('main table, main pre')].filter(e => e.scrollWidth > e.clientWidth + 2 || e.getBoundingClientRect().right > edge).length }")
            assert clipped == 0, f"{name}: {clipped} tables or outputs clipped behind a scroll bar"
        browser.close()
    assert not outside, f"pages asked the network for {sorted(set(outside))[:5]}"
