"""Every chapter executed, one test per notebook (nbdev_test itself only prints 'Success.')."""
import importlib
from pathlib import Path
import pytest

NBS = sorted(p for p in (Path(__file__).resolve().parents[1] / "nbs").glob("*.ipynb") if not p.name.startswith("_"))

@pytest.mark.parametrize("nb", NBS, ids=[p.stem for p in NBS])
def test_notebook(nb):
    nbtest = importlib.import_module("nbdev.test")  # through the module, so pytest does not collect `test_nb`
    ok, secs = nbtest.test_nb(nb, skip_flags=["slow"], basepath=nb.parents[1])
    assert ok, f"{nb.name} failed (see the traceback above)"
