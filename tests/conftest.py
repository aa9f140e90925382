import os, sys
from pathlib import Path
import pytest, torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# pytest -n 2 runs two workers on the two cores: every process the suite starts (chapters, the CLI, benches, torchrun)
# inherits one thread each, or the load climbs to 4-5 and every item slows down
for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"): os.environ[_v] = "1"
if "PEFT_NOTES_DATA" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
    os.environ["PEFT_NOTES_DATA"] = str(ROOT.parent / "shared" / "data")
torch.set_num_threads(1)

@pytest.fixture(scope="session")
def root(): return ROOT

def pytest_collection_modifyitems(config, items):
    "Start the longest items first (durations of the last full run, tests/durations.json; tools/suite_budget.py --update writes it), so that two workers finish together."
    f = ROOT / "tests" / "durations.json"
    if not f.is_file(): return
    import json
    d = json.loads(f.read_text())
    items.sort(key=lambda it: -d.get(it.nodeid, 1.0))
