"""Every chapter executed, one test per notebook (nbdev_test itself only prints 'Success.'); every displayed cell that
shows something when it runs carries that output in the stored notebook, and that stored output is what the cell
produces now (tests/_run_nb.py).

Each notebook runs in a process of its own: a chapter registers its methods as it defines them, and must not see
the classes another chapter (or another test) registered in the same interpreter. Each process gets one thread
(`pytest -n 2` runs two of them on the two cores)."""
import os, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted(p for p in (ROOT / "nbs").glob("*.ipynb") if not p.name.startswith("_"))
RUN = Path(__file__).with_name("_run_nb.py")
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}

@pytest.mark.parametrize("nb", NBS, ids=[p.stem for p in NBS])
def test_notebook(nb):
    r = subprocess.run([sys.executable, str(RUN), str(nb), str(ROOT)], capture_output=True, text=True, timeout=1200,
                       env={**os.environ, **ONE_THREAD})
    assert r.returncode != 2, r.stderr[-3000:]                       # displayed cells whose output the page would not show
    assert r.returncode != 3, r.stderr[-3000:]                       # displayed cells whose stored output is not what they show now
    assert r.returncode == 0, f"{nb.name} failed:\n{r.stderr[-6000:]}"
