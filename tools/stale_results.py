"""Which stored results predate a change to the code they measure.

A result's commit is the one its provenance records (`provenance.commit`, or each row's), or, for files written
before results recorded it, the last commit that changed the file. A result is stale when a module it measures
changed after that commit. Prints one line per result; exits 0 (a report, not a gate: the book marks stale figures).

    python tools/stale_results.py [--json]
"""
import json, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ["peft_notes/core", "peft_notes/methods/reparameterized/lora.py"]
HARNESS = ["peft_notes/train.py", "peft_notes/data.py", "peft_notes/models.py"]
MEASURES = {  # stored result -> the code whose change makes it stale
    "bbc.json": CORE + HARNESS,
    "sst2.json": CORE + HARNESS,
    "sst2_family.json": CORE + HARNESS + ["peft_notes/methods/reparameterized"],
    "family_memory_cpu.json": CORE + ["peft_notes/methods", "bench/family_memory.py"],
    "bench_cpu.json": CORE + ["bench/lora_bench.py"],
    "bench_cpu_core_v2.json": CORE + ["bench/lora_bench.py"],
    "bench_dora_cpu.json": CORE + ["peft_notes/methods/reparameterized/dora.py", "bench/dora_bench.py"],
    "bench_dora_cpu_core_v2.json": CORE + ["peft_notes/methods/reparameterized/dora.py", "bench/dora_bench.py"],
    "which_matrices_sst2.json": CORE + HARNESS + ["bench/which_matrices.py"],
    "intrinsic_dim_sst2.json": HARNESS + ["peft_notes/reparam.py", "bench/intrinsic_dim.py"],
    "additive_bench_cpu.json": CORE + ["peft_notes/methods", "bench/additive_bench.py"],
    "sst2_additive.json": CORE + HARNESS + ["peft_notes/methods/additive"],
    "family_memory_additive_cpu.json": CORE + ["peft_notes/methods", "bench/family_memory.py"],
    "sst2_selective.json": CORE + HARNESS + ["peft_notes/methods/selective"],
    "family_memory_selective_cpu.json": CORE + ["peft_notes/methods", "bench/family_memory.py"],
    "sst2_hybrid.json": CORE + HARNESS + ["peft_notes/methods/hybrid", "peft_notes/methods/additive"],
    "sst2_hybrid_search.json": CORE + HARNESS + ["peft_notes/methods/hybrid", "peft_notes/methods/additive", "peft_notes/methods/selective/bitfit.py"],
    "autopeft_sst2.json": CORE + HARNESS + ["peft_notes/methods/hybrid", "peft_notes/methods/additive", "bench/autopeft_search.py"],
    "noah_sst2.json": CORE + HARNESS + ["peft_notes/methods/hybrid", "peft_notes/methods/additive", "bench/noah_search.py"],
    "s4_sst2.json": CORE + HARNESS + ["peft_notes/methods/hybrid", "peft_notes/methods/additive", "peft_notes/methods/selective/bitfit.py", "bench/s4_search.py"],
    "placement_char_llama.json": CORE + ["peft_notes/foundations.py", "peft_notes/methods/hybrid/placement.py", "peft_notes/methods/additive/adapters.py", "bench/placement_study.py"],
    "placement_char_llama_sweep.json": CORE + ["peft_notes/foundations.py", "peft_notes/methods/hybrid/placement.py", "peft_notes/methods/additive/adapters.py", "bench/placement_study.py"],
}

def git(*args)->str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()

def recorded_commit(path:Path)->tuple:
    "(commit, how we know it) for a stored result."
    d = json.loads(path.read_text())
    rows = d if isinstance(d, list) else [d, *(v for v in d.values() if isinstance(v, dict))]   # a list of rows, one result, or {name: row}
    commits = {(r.get("provenance") or {}).get("commit") for r in rows if isinstance(r, dict)} - {None}
    if commits:   # several rows from several runs: the oldest one decides
        ordered = sorted(commits, key=lambda c: int(git("rev-list", "--count", c) or 0))
        return ordered[0], "provenance"
    return git("log", "-1", "--format=%H", "--", str(path.relative_to(ROOT))), "last commit of the file"

def report()->list[dict]:
    out = []
    for path in sorted((ROOT / "results").glob("*.json")):
        commit, how = recorded_commit(path)
        watched = MEASURES.get(path.name)
        if watched is None: out.append({"file": path.name, "commit": commit[:7], "how": how, "stale": None, "changed": ["(no entry in MEASURES)"]}); continue
        changed = git("log", "--format=%h %s", f"{commit}..HEAD", "--", *watched).splitlines() if commit else ["(no commit)"]
        files = sorted(set(git("diff", "--name-only", f"{commit}..HEAD", "--", *watched).splitlines())) if commit else []
        out.append({"file": path.name, "commit": commit[:7], "how": how, "stale": bool(changed), "changed": [c[:90] for c in changed],
                    "files": files})   # the watched files that changed since: what a reader weighs to judge the figure
    return out

if __name__ == "__main__":
    rows = report()
    if "--json" in sys.argv: print(json.dumps(rows, indent=1)); sys.exit(0)
    for r in rows:
        state = "unknown" if r["stale"] is None else "STALE" if r["stale"] else "current"
        print(f"{r['file']:<30} {r['commit']:<8} ({r['how']}): {state}" + (f" - {len(r['changed'])} later change(s), latest: {r['changed'][0]}" if r["stale"] else ""))
        if r["stale"]: print(f"{'':<30} files changed since: {', '.join(r['files'][:6])}" + (f" (+{len(r['files']) - 6} more)" if len(r["files"]) > 6 else ""))
