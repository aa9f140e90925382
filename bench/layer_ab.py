"""LoRA's per-layer step cost of two checkouts, A/B: `bench/lora_bench.py`'s one-layer timing, run in each checkout in turn.

    git worktree add /tmp/a REV_A; git worktree add /tmp/b REV_B
    .venv/bin/python bench/layer_ab.py /tmp/a /tmp/b --repeats 3 --rounds 12

Each run is a fresh process whose `peft_notes` is the checkout's (PYTHONPATH), timing one 384x384 projection with
2,048 tokens, forward + backward: the frozen layer alone (floor), ours and Hugging Face PEFT's LoRA layer, interleaved
and paired inside the process. The checkouts alternate (A, B, A, B, ...), so load on the machine falls on both; PEFT's
layer, the same in both, is the yardstick: compare `ours` and `ours/hf LoRA cost` (each layer's time minus the floor's).
"""
import argparse, json, os, statistics, subprocess, sys
from pathlib import Path

CHILD = """
import sys, json, importlib.util, torch
spec = importlib.util.spec_from_file_location("lb", sys.argv[1] + "/bench/lora_bench.py"); lb = importlib.util.module_from_spec(spec); spec.loader.exec_module(lb)
import peft_notes; assert peft_notes.__file__.startswith(sys.argv[1]), peft_notes.__file__
s, extra = lb.layer_bench(int(sys.argv[2]), 3, 3, torch.device("cpu"))
print(json.dumps({"layer_ms": {k: 1000 * v for k, v in s.items()}, "ours/hf LoRA cost": extra}))
"""

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkouts", nargs=2); ap.add_argument("--repeats", type=int, default=3); ap.add_argument("--rounds", type=int, default=12)
    a = ap.parse_args(argv)
    runs = {str(Path(c).resolve()): [] for c in a.checkouts}
    for _ in range(a.repeats):
        for c, rs in runs.items():
            out = subprocess.run([sys.executable, "-c", CHILD, c, str(a.rounds)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": c}, cwd=c, check=True)
            rs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for c, rs in runs.items():
        med = lambda f: statistics.median(f(r) for r in rs)
        print(f"{c}: ours {med(lambda r: r['layer_ms']['ours']):.2f} ms, hf {med(lambda r: r['layer_ms']['hf']):.2f} ms, floor {med(lambda r: r['layer_ms']['floor']):.2f} ms, "
              f"LoRA's own cost ours/hf {med(lambda r: r['ours/hf LoRA cost']):.2f}  (medians of {len(rs)} runs: "
              + ", ".join(f"{r['layer_ms']['ours']:.2f}" for r in rs) + " ms)")

if __name__ == "__main__": main()
