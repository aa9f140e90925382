"""The suite's budget, reported (a report, not a gate: timings on a shared machine flake).

`make test` writes pytest's JUnit XML (every item's duration) and calls this script, which prints the slowest items and
names the chapters over their budget (60 s each at CI size) and the suite's total against its 20 minutes. `--update`
also writes the durations to `tests/durations.json`, which `tests/conftest.py` reads to start the longest items first.

    python tools/suite_budget.py runs/junit.xml [--wall SECONDS] [--update] [--top N]"""
import argparse, json, re, xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAPTER_S, SUITE_S = 60, 20 * 60
DURATIONS = ROOT / "tests" / "durations.json"

def items(junit:Path)->dict:
    "{pytest node id: seconds} from a JUnit XML report."
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        path = case.get("classname", "").replace(".", "/")   # tests.test_x -> tests/test_x
        out[f"{path}.py::{case.get('name')}"] = float(case.get("time", 0))
    return out

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("junit"); ap.add_argument("--wall", type=float, default=None, help="the suite's wall time, if measured outside pytest")
    ap.add_argument("--update", action="store_true"); ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args(argv)
    t = items(Path(a.junit))
    chapters = {re.sub(r".*test_notebook\[(.*)\]", r"\1", k): v for k, v in t.items() if "test_notebook[" in k}
    over = {k: v for k, v in sorted(chapters.items(), key=lambda kv: -kv[1]) if v > CHAPTER_S}
    print(f"\nsuite budget: {len(t)} items, {sum(t.values()):.0f} s of work on the workers"
          + (f", {a.wall:.0f} s wall (budget {SUITE_S} s: {'within' if a.wall <= SUITE_S else 'OVER'})" if a.wall else ""))
    print(f"chapters: {len(chapters)}, {sum(chapters.values()):.0f} s; over {CHAPTER_S} s each: "
          + (", ".join(f"{k} {v:.0f} s" for k, v in over.items()) if over else "none"))
    if a.top: print(f"slowest {a.top} items:")
    for k, v in sorted(t.items(), key=lambda kv: -kv[1])[:a.top]: print(f"  {v:7.1f} s  {k}")
    if a.update:
        DURATIONS.write_text(json.dumps({k: round(v, 1) for k, v in sorted(t.items())}, indent=0) + "\n")
        print(f"wrote {DURATIONS.relative_to(ROOT)}")

if __name__ == "__main__": main()
