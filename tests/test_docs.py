"""`make docs` builds the site from the top-level _quarto.yml, with a page for every notebook."""
import os, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def test_quarto_yml_is_the_top_level_file():
    link = ROOT / "nbs" / "_quarto.yml"
    assert link.is_symlink() and link.resolve() == (ROOT / "_quarto.yml").resolve()

def test_site_has_a_page_per_notebook():
    r = subprocess.run([sys.executable, "tools/docs.py", "site"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    site = ROOT / "_docs"
    nbs = sorted(p.stem for p in (ROOT / "nbs").glob("*.ipynb"))
    missing = [n for n in nbs if not (site / f"{n}.html").exists() and not (site / n / "index.html").exists()]
    assert not missing, f"no page for {missing}; site has {sorted(p.name for p in site.iterdir())[:20]}"
    page = (site / "10_lora.html").read_text()
    assert "Low-rank adaptation" in page and "peft-notes" in page   # the chapter, in the site's frame from _quarto.yml
    assert "LoraLayer" in page
