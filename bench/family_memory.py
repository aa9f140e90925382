"""Training memory of the harness's methods, each in a fresh process: the memory column of the SST-2 family table.

    .venv/bin/python bench/family_memory.py --out results/family_memory_cpu.json    # about 3 minutes on 2 cores

Each method is built exactly as `peft-notes compare` builds it (`peft_notes.train.build_model`: the shipped
MiniLM, a 2-way head trained in full, the method's recipe), then trained for a few AdamW steps on one batch of
32 x 64 tokens with the method's training hooks. Reported: the increase of resident memory over the level
before the first step (sampled every 5 ms), and, deterministic, what training holds besides the weights
(activations saved for backward, gradients, optimizer state) — both in a fresh process per method, because a
process's resident memory does not come back down after a method is done (which is why the `peak_rss_mb`
of a sequential `compare` run only grows from row to row). Also reported: the median time of a training step after
the first (`step_s`), measured in the same quiet process — the step-time column when a long `compare` ran beside
other work. A method that chooses its parameters from data (FishMask, LT-SFT, diff pruning, FAR, SPT) chooses first,
on the same batch, as `fit` does: its time and resident-memory increase are reported apart (`select_s`,
`select_rss_increase_mb`; the step counts of a priming run can be overridden, e.g. `lt_sft:select_steps=5`). After
it, the allocator reuses the pages the choice freed, so that method's `rss_increase_mb` understates training
memory: compare its deterministic columns (saved activations, gradients, optimizer state).
"""
import argparse, json, statistics, subprocess, sys, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).parent))
from lora_bench import _batch, tensor_bytes

METHODS = ("full", "head", "lora", "dora", "vera", "loha", "lokr", "adalora", "dylora", "sora")

def child(method, batch, seq, steps):
    from peft_notes.core import PeftModel
    from peft_notes.train import PeakMemory, _rss_mb, build_model, provenance
    name, _, spec = method.partition(":")                     # e.g. parallel_adapter:bottleneck=192 (a config override, as compare's --set)
    config = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in spec.split(";") if kv)}
    model, _ = build_model(name, 2, config=config or None)
    x = _batch(batch, seq, torch.device("cpu"))
    pm = model if isinstance(model, PeftModel) else None
    select = {}
    if pm:                                                     # a method that chooses what to train from data does it here, as fit does
        before, t0 = _rss_mb(), time.perf_counter()
        with PeakMemory(every=0.005) as sel: pm.before_training([x])
        select = {"select_s": time.perf_counter() - t0, "select_rss_increase_mb": sel.peak - before}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    before = _rss_mb()
    times = []
    with PeakMemory(every=0.005) as mem:
        for i in range(steps):
            t0 = time.perf_counter()
            if pm: pm.before_step(i, steps)
            loss = model(**x).loss
            extra = pm.extra_loss() if pm else None
            (loss if extra is None else loss + extra).backward(); opt.step()
            if pm: pm.after_step(i, steps)
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
    print(json.dumps({"method": method, "rss_increase_mb": mem.peak - before, "step_s": statistics.median(times[1:] or times), **select,
                      **tensor_bytes(model, opt, x), "provenance": provenance(sys.argv, methods=[name])}))

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated; NAME:FIELD=VALUE;... overrides config fields"); ap.add_argument("--batch", type=int, default=32); ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6); ap.add_argument("--out", default=None); ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child: return child(a.child, a.batch, a.seq, a.steps)
    out = {}
    for m in a.methods.split(","):
        p = subprocess.run([sys.executable, __file__, "--child", m, "--batch", str(a.batch), "--seq", str(a.seq), "--steps", str(a.steps)],
                           capture_output=True, text=True)
        if p.returncode: raise RuntimeError(f"memory run of {m} failed:\n{p.stderr[-3000:]}")
        out[m] = json.loads(p.stdout.strip().splitlines()[-1])
        out[m]["provenance"]["command"] = [Path(__file__).name, *(sys.argv[1:] if argv is None else argv)]   # this run's, not the child's
        r = out[m]; print(f"{m:<16} step {r['step_s']:.3f} s   RSS +{r['rss_increase_mb']:6.0f} MB   saved {r['saved_mb']:5.0f} + grads {r['grad_mb']:5.1f} + AdamW {r['optim_mb']:5.1f} MB", flush=True)
    if a.out: Path(a.out).parent.mkdir(parents=True, exist_ok=True); Path(a.out).write_text(json.dumps(out, indent=1))
    return out

if __name__ == "__main__":
    main()
