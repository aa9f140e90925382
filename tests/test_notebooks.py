"""Every chapter executed, one test per notebook (nbdev_test itself only prints 'Success.').

Each notebook runs in a process of its own: a chapter registers its methods as it defines them, and must not see
the classes another chapter (or another test) registered in the same interpreter."""
import subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted(p for p in (ROOT / "nbs").glob("*.ipynb") if not p.name.startswith("_"))
RUN = ("import sys; from pathlib import Path; import nbdev.test as t; "
       "ok, secs = t.test_nb(Path(sys.argv[1]), skip_flags=['slow'], basepath=Path(sys.argv[2])); sys.exit(0 if ok else 1)")

@pytest.mark.parametrize("nb", NBS, ids=[p.stem for p in NBS])
def test_notebook(nb):
    r = subprocess.run([sys.executable, "-c", RUN, str(nb), str(ROOT)], capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, f"{nb.name} failed:\n{r.stderr[-6000:]}"
