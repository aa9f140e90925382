"""`make docs` builds the site from the top-level _quarto.yml, with a page for every notebook."""
import os, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def test_quarto_yml_is_the_top_level_file():
    link = ROOT / "nbs" / "_quarto.yml"
    assert link.is_symlink() and link.resolve() == (ROOT / "_quarto.yml").resolve()

def _git(*args)->str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout

def test_site_has_a_page_per_notebook(tmp_path):
    "The site builds in a copy of the tracked files, never writing into the repository; every notebook gets a page."
    import shutil
    before = _git("status", "--porcelain")
    copy = tmp_path / "repo"
    for f in _git("ls-files").splitlines():
        src, dst = ROOT / f, copy / f
        if not src.exists() and not src.is_symlink(): continue   # deleted in the working tree
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst, follow_symlinks=False)             # nbs/_quarto.yml stays a link to ../_quarto.yml
    r = subprocess.run([sys.executable, "tools/docs.py", "site"], cwd=copy, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert _git("status", "--porcelain") == before, "building the site changed the repository"
    site = copy / "_docs"
    nbs = sorted(p.stem for p in (ROOT / "nbs").glob("*.ipynb"))
    missing = [n for n in nbs if not (site / f"{n}.html").exists() and not (site / n / "index.html").exists()]
    assert not missing, f"no page for {missing}; site has {sorted(p.name for p in site.iterdir())[:20]}"
    page = (site / "10_lora.html").read_text()
    assert "Low-rank adaptation" in page and "peft-notes" in page   # the chapter, in the site's frame from _quarto.yml
    assert "LoraLayer" in page
    assert "Reparameterized PEFT" in (site / "index.html").read_text()   # the hand-written sidebar, by family

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
    slow = [cell("#| slow\n1/0", [])]
    assert nb(slow).returncode == 0                                                  # make test skips slow cells...
    import os
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "_run_nb.py"), str(tmp_path / "t.ipynb"), str(ROOT)], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "PEFT_NOTES_SLOW": "1"})
    assert r.returncode == 1                                                         # ...make slow runs them

def test_sidebar_lists_every_chapter_once():
    "The reading order is written by hand (custom_sidebar): every notebook is in it, once, and nothing else is."
    import re
    names = re.findall(r"^\s*- (\S+\.ipynb)\s*$", (ROOT / "nbs" / "sidebar.yml").read_text(), re.M)
    nbs = sorted(p.name for p in (ROOT / "nbs").glob("*.ipynb"))
    assert sorted(names) == nbs and len(names) == len(set(names)), (sorted(set(nbs) - set(names)), sorted(set(names) - set(nbs)))
    assert names[:2] == ["index.ipynb", "00_intro.ipynb"]
