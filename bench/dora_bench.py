"""DoRA's training step against Hugging Face PEFT's DoRA, as ratios measured in one run (issue 4's goal: <= 0.9).

    .venv/bin/python bench/dora_bench.py --rounds 24 --out results/bench_dora_cpu_core_v2.json   # about 7 minutes on 2 cores
    .venv/bin/python bench/dora_bench.py --quick                                          # smoke run (the test)

The setting of `lora_bench.py`: the shipped MiniLM, a batch of 32 x 64 tokens, r=8, alpha=16 on query and
value, dropout 0, head frozen; a step is forward, backward, AdamW step, zero_grad. Rows: ours (peft_notes
DoRA), hf (PEFT's `LoraConfig(use_dora=True)`), lora and hf_lora (our LoRA and PEFT's, for what DoRA adds
and for LoRA's own ratio) and floor (every weight frozen, gradient through every layer). Timings interleaved and paired, as in lora_bench.py. A
last timing isolates DoRA's own cost on one 384x384 projection (2,048 tokens, forward + backward): each
layer minus the frozen layer alone.
"""
import argparse, json, statistics, sys
from pathlib import Path
import torch
from peft_notes.train import provenance
sys.path.insert(0, str(Path(__file__).parent))
from lora_bench import _batch, build, interleaved, ratio, step

def build_dora(row, device):
    from peft_notes.models import load_minilm
    base = load_minilm(2)[0].to(device)
    if row == "ours":
        from peft_notes.core import get_peft_model
        from peft_notes.reparam import DoraConfig
        model = get_peft_model(base, DoraConfig(r=8, alpha=16, target_modules=["query", "value"]))
    else:
        import peft
        model = peft.get_peft_model(base, peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"], use_dora=True))
    return model.train(), torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

def layer_bench(rounds, steps, warmup, device, tokens=2048, d=384):
    "Forward + backward of one d x d projection: frozen alone, ours, PEFT's DoRA layer (B non-zero in both)."
    import peft
    from torch import nn
    from peft_notes.reparam import DoraConfig, DoraLayer
    torch.manual_seed(0)
    base = nn.Linear(d, d).to(device).requires_grad_(False)
    ours = DoraLayer(base); ours.update_layer("default", DoraConfig(r=8, alpha=16, init_lora_weights=False)); ours.set_active(["default"])
    holder = nn.ModuleDict({"proj": nn.Linear(d, d).to(device)})
    hf = peft.get_peft_model(holder, peft.LoraConfig(r=8, lora_alpha=16, target_modules=["proj"], use_dora=True, init_lora_weights=False)).base_model.model["proj"]
    x, g = torch.randn(tokens, d, device=device, requires_grad=True), torch.randn(tokens, d, device=device)
    run = lambda m: (lambda: m(x).backward(g))
    t = interleaved({"frozen": run(base), "ours": run(ours.train()), "hf": run(hf.train())}, rounds, steps * 4, warmup, device)
    med = {k: statistics.median(v) for k, v in t.items()}
    return med, (med["ours"] - med["frozen"]) / (med["hf"] - med["frozen"])

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32); ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=12); ap.add_argument("--steps", type=int, default=3); ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true"); ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.quick: a.batch, a.seq, a.rounds, a.steps, a.warmup = 4, 16, 2, 1, 1
    dev = torch.device(a.device)
    print(f"MiniLM, batch {a.batch}x{a.seq}, DoRA r=8 on query,value; {a.rounds} rounds x {a.steps} steps, {torch.get_num_threads()} threads, {dev}", flush=True)
    x = _batch(a.batch, a.seq, dev)
    torch.manual_seed(0)
    models = {"ours": build_dora("ours", dev), "hf": build_dora("hf", dev), "lora": build("ours", dev), "hf_lora": build("hf", dev), "floor": build("floor", dev)}
    t = interleaved({r: (lambda m=m, o=o: step(m, o, x)) for r, (m, o) in models.items()}, a.rounds, a.steps, a.warmup, dev)
    del models
    layer_s, layer_ratio = layer_bench(a.rounds, a.steps, a.warmup, dev)
    ratios = {"ours / hf DoRA step": ratio(t, "ours", "hf"), "ours DoRA / ours LoRA step": ratio(t, "ours", "lora"),
              "hf DoRA / ours LoRA step": ratio(t, "hf", "lora"), "ours DoRA / floor step": ratio(t, "ours", "floor"),
              "hf DoRA / floor step": ratio(t, "hf", "floor"), "ours LoRA / hf LoRA step": ratio(t, "lora", "hf_lora"),
              "ours LoRA / floor step": ratio(t, "lora", "floor"),
              "layer: DoRA's own cost, ours / hf": (layer_ratio,) * 3}
    print("median step (ms): " + "  ".join(f"{r} {1000 * statistics.median(v):.1f}" for r, v in t.items()))
    print("one 384x384 layer, 2048 tokens, fwd+bwd (ms): " + "  ".join(f"{r} {1000 * s:.2f}" for r, s in layer_s.items()))
    for k, (v, lo, hi) in ratios.items(): print(f"{k:<36} {v:>7.3f}  IQR {lo:.3f}-{hi:.3f}" + ("   goal <= 0.90: " + ("ok" if v <= 0.9 else "MISSED") if k.startswith("ours / hf") else ""))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"provenance": provenance(methods=["dora", "lora"]), "args": vars(a), "step_s": t, "layer_s": layer_s, "ratios": ratios, "threads": torch.get_num_threads()}, indent=1))
    return ratios

if __name__ == "__main__":
    main()
