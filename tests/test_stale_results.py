"""Stored results are stale when what they measured changed, not when the code was touched (tools/stale_results.py)."""
import importlib.util, json, subprocess, sys
from pathlib import Path
import peft_notes.testing as testing
from peft_notes.testing import fingerprint

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("stale_results", ROOT / "tools" / "stale_results.py")
stale = importlib.util.module_from_spec(spec); spec.loader.exec_module(stale)

def test_a_fingerprint_changes_with_the_computation_only(monkeypatch):
    before = fingerprint("lora")
    assert fingerprint("lora") == before and fingerprint("dora") != before
    monkeypatch.setitem(testing.FINGERPRINT_CONFIG, "lora", {"alpha": 4})     # another scale: another computation
    assert fingerprint("lora") != before

def test_a_definition_is_compared_without_its_comments():
    a = "import x\n\ndef f(a):\n    return a + 1   # one\n\ndef g(): pass\n"
    assert stale.definition(a, "f") == "def f(a):\n    return a + 1"
    assert stale.definition(a.replace("# one", "# two"), "f") == stale.definition(a, "f")
    assert stale.definition(a.replace("a + 1", "a + 2"), "f") != stale.definition(a, "f")
    assert stale.definition(a, "h") == ""

def test_every_stored_result_is_judged():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "stale_results.py"), "--json"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(r.stdout)
    stored = {p.name for p in (ROOT / "results").glob("*.json")}
    assert {x["file"] for x in rows} == stored and set(stale.MEASURES) == stored   # a new stored result needs an entry: what it measures
    assert all(x["state"] in ("current", "STALE", "unknown") for x in rows)
    assert all(not x["missing"] for x in rows)                      # every part records (or was backfilled with) its fingerprints
    for x in rows:                                                  # stale only with a reason: a changed fingerprint or a changed file of its own
        assert (x["state"] == "STALE") == bool(x["changed"] or x["files"]), x
