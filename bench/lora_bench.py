"""LoRA speed and memory, as ratios measured in one run (issue 3's benchmark).

    .venv/bin/python bench/lora_bench.py                     # about 6 minutes on 2 cores (`make bench`)
    .venv/bin/python bench/lora_bench.py --rounds 24 --out F  # the stored figures: results/bench_cpu_core_v2.json (--rounds 12)
    .venv/bin/python bench/lora_bench.py --quick              # a smoke run at a tiny size (what the test runs)

Everything runs on the shipped MiniLM (6 layers, hidden 384) with a batch of 32 sequences of 64 tokens,
LoRA r=8, alpha=16 on `query` and `value`, dropout 0, the classification head frozen. Step = forward,
backward, AdamW step, zero_grad. The rows:

- ours: `peft_notes` LoRA.  hf: Hugging Face PEFT's LoRA (the same layers, the same init).
- floor: the same model with every weight frozen but the embedding output requiring grad, so the
  gradient still flows back through every layer: what any method that adapts every layer must pay.
- full: full fine-tuning.
- ours_ckpt: ours with activation checkpointing (`gradient_checkpointing_enable`, non-reentrant): the
  memory it saves and the step time it costs.

Mixed-batch inference: two LoRA adapters (q,v r=8) and the base model serve one batch, example i
through `adapter_names[i]` (a, b, base, a, b, base, ...), ours against Hugging Face PEFT's
`adapter_names=` forward on the same adapters (exported with `to_hf_peft`, so both compute the same).

Timings are interleaved and paired: each round runs every row a few steps, in a rotated order, and a
ratio is the median over rounds of that round's ratio (with its interquartile range), so load on the
machine hits both sides of a ratio alike. A last timing isolates LoRA's own cost on one 384x384
projection (2,048 tokens, forward + backward): ours and Hugging Face's layer, each minus the frozen
layer alone. Memory runs each row in its own fresh process and reports the increase of resident
memory over the pre-training level (model, optimizer object and batch already built), sampled every
5 ms, and torch's allocator peak on a GPU; beside it, deterministic, the tensors training holds besides the weights (activations saved
for backward, gradients, optimizer state).
"""
import argparse, json, statistics, subprocess, sys, time
from pathlib import Path
import torch
from peft_notes.train import provenance

ROWS = ("ours", "hf", "floor", "full", "ours_ckpt")
GOALS = {"ours / hf step": 0.95, "ours / floor step": 1.10, "ours / full memory": 0.6,
         "merged / base inference": 1.00, "unmerged / base inference": 1.05, "ours / hf mixed-batch inference": 1.00}

def _batch(batch, seq, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = {"input_ids": torch.randint(1000, 30000, (batch, seq), generator=g),
         "attention_mask": torch.ones(batch, seq, dtype=torch.long),
         "labels": torch.randint(0, 2, (batch,), generator=g)}
    return {k: v.to(device) for k, v in x.items()}

def build(row, device, dtype=torch.float32, model_fn=None):
    "The model for one row and its optimizer (None when nothing trains)."
    from peft_notes.models import load_minilm
    base = (model_fn or (lambda: load_minilm(2)[0]))().to(device=device, dtype=dtype)
    if row in ("ours", "ours_ckpt"):
        from peft_notes.core import get_peft_model
        from peft_notes.reparam import LoraConfig
        model = get_peft_model(base, LoraConfig(r=8, alpha=16, target_modules=["query", "value"]))
        if row == "ours_ckpt": model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif row == "hf":
        import peft
        model = peft.get_peft_model(base, peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"]))
    elif row == "floor":
        model = base.requires_grad_(False)
        model.get_input_embeddings().register_forward_hook(lambda m, i, o: o.requires_grad_())
    elif row == "full": model = base
    else: raise ValueError(f"unknown row {row!r}; rows: {ROWS}")
    ps = [p for p in model.parameters() if p.requires_grad]
    return model.train(), (torch.optim.AdamW(ps, lr=1e-4) if ps else None)

def step(model, opt, x):
    loss = model(**x).loss
    loss.backward()
    if opt is not None: opt.step(); opt.zero_grad(set_to_none=True)
    return loss

def _sync(device):
    if device.type == "cuda": torch.cuda.synchronize()

def interleaved(fns:dict, rounds:int, steps:int, warmup:int, device)->dict:
    "Per-round median seconds of each function: every round runs every function `steps` times, in a rotated order."
    for f in fns.values():
        for _ in range(warmup): f()
    names, out = list(fns), {k: [] for k in fns}
    for i in range(rounds):
        for k in names[i % len(names):] + names[:i % len(names)]:
            ts = []
            for _ in range(steps):
                _sync(device); t = time.perf_counter(); fns[k](); _sync(device); ts.append(time.perf_counter() - t)
            out[k].append(statistics.median(ts))
    return out

def ratio(t:dict, a:str, b:str)->tuple:
    "Median over rounds of the paired ratio a/b, and its interquartile range: rows that ran side by side are compared."
    r = sorted(x / y for x, y in zip(t[a], t[b]))
    q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
    return statistics.median(r), q[0], q[2]

def layer_bench(rounds, steps, warmup, device, tokens=2048, d=384):
    "One d x d projection, `tokens` rows: forward + backward of the frozen layer alone, ours, and Hugging Face's LoRA layer."
    import peft
    from torch import nn
    from peft_notes.reparam import LoraConfig, LoraLayer
    torch.manual_seed(0)
    base = nn.Linear(d, d).to(device).requires_grad_(False)
    ours = LoraLayer(base); ours.update_layer("default", LoraConfig(r=8, alpha=16, init_lora_weights=False)); ours.set_active(["default"])
    holder = nn.ModuleDict({"proj": nn.Linear(d, d).to(device)})
    hf = peft.get_peft_model(holder, peft.LoraConfig(r=8, lora_alpha=16, target_modules=["proj"], init_lora_weights=False)).base_model.model["proj"]
    x, g = torch.randn(tokens, d, device=device, requires_grad=True), torch.randn(tokens, d, device=device)
    def run(m):
        def f(): m(x).backward(g)
        return f
    t = interleaved({"floor": run(base), "ours": run(ours), "hf": run(hf)}, rounds, steps * 5, warmup * 5, device)
    med = {k: statistics.median(v) for k, v in t.items()}
    return med, (med["ours"] - med["floor"]) / (med["hf"] - med["floor"])

def mixed_batch_bench(x, rounds, steps, warmup, device):
    "Per-round seconds of one mixed-batch forward (adapters a, b and the base, one per example), ours and Hugging Face PEFT's."
    import tempfile, peft
    from peft_notes.core import get_peft_model
    from peft_notes.interop import to_hf_peft
    from peft_notes.models import load_minilm
    from peft_notes.reparam import LoraConfig
    torch.manual_seed(0)
    ours = get_peft_model(load_minilm(2)[0].to(device), LoraConfig(r=8, alpha=16, target_modules=["query", "value"]), "a")
    ours.add_adapter("b", LoraConfig(r=8, alpha=16, target_modules=["query", "value"]))
    with torch.no_grad():
        for n, p in ours.named_parameters():
            if "lora_B" in n: p.normal_(0, 0.02)
    ours.eval()
    with tempfile.TemporaryDirectory() as d:
        for n in ("a", "b"): to_hf_peft(ours, f"{d}/{n}", n)
        hf = peft.PeftModel.from_pretrained(load_minilm(2)[0].to(device), f"{d}/a", adapter_name="a")
        hf.load_adapter(f"{d}/b", adapter_name="b"); hf.eval()
    names = [("a", "b", "__base__")[i % 3] for i in range(x["input_ids"].shape[0])]
    with torch.no_grad():
        err = (ours(**x, adapter_names=names).logits - hf(**x, adapter_names=names).logits).abs().max().item()
        t = interleaved({"ours": lambda: ours(**x, adapter_names=names), "hf": lambda: hf(**x, adapter_names=names)}, rounds, steps * 2, warmup, device)
    return t, err

def tensor_bytes(model, opt, x)->dict:
    "MB of what training holds besides the weights: activations saved for backward (distinct storages), gradients, optimizer state."
    saved, weights = {}, {p.untyped_storage().data_ptr() for p in model.parameters()}
    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in weights: saved[st.data_ptr()] = st.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t): loss = model(**x).loss
    loss.backward()
    if opt is not None: opt.step()
    mb = lambda n: n / 2**20
    out = {"saved_mb": mb(sum(saved.values())), "grad_mb": mb(sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)),
           "optim_mb": mb(sum(v.nbytes for st in (opt.state.values() if opt else []) for v in st.values() if torch.is_tensor(v)))}
    if opt is not None: opt.zero_grad(set_to_none=True)
    out["tensors_mb"] = out["saved_mb"] + out["grad_mb"] + out["optim_mb"]
    return out

def memory_child(row, batch, seq, steps, device):
    "Runs in a fresh process: resident memory increase over the pre-training level during `steps` steps."
    from peft_notes.train import PeakMemory, _rss_mb
    dev = torch.device(device)
    model, opt = build(row, dev)
    x = _batch(batch, seq, dev)
    if dev.type == "cuda": torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); alloc0 = torch.cuda.memory_allocated()
    before = _rss_mb()
    with PeakMemory(every=0.005) as mem:
        for _ in range(steps): step(model, opt, x)
    out = {"row": row, "rss_before_mb": before, "rss_peak_mb": mem.peak, "rss_increase_mb": mem.peak - before, **tensor_bytes(model, opt, x)}
    if dev.type == "cuda": out["torch_increase_mb"] = (torch.cuda.max_memory_allocated() - alloc0) / 2**20
    print(json.dumps(out))

def measure_memory(rows, batch, seq, steps, device):
    out = {}
    for r in rows:
        p = subprocess.run([sys.executable, __file__, "--memory-child", r, "--batch", str(batch), "--seq", str(seq),
                            "--steps", str(steps), "--device", device], capture_output=True, text=True)
        if p.returncode: raise RuntimeError(f"memory run of {r} failed:\n{p.stderr[-3000:]}")
        out[r] = json.loads(p.stdout.strip().splitlines()[-1])
    return out

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32); ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=12, help="interleaved rounds")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per row per round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs, not the ratios")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.quick: a.batch, a.seq, a.rounds, a.steps, a.warmup = 4, 16, 2, 1, 1
    if a.memory_child: return memory_child(a.memory_child, a.batch, a.seq, a.steps + a.warmup, a.device)
    dev = torch.device(a.device)
    print(f"MiniLM, batch {a.batch}x{a.seq}, LoRA r=8 on query,value; {a.rounds} rounds x {a.steps} steps, "
          f"{torch.get_num_threads()} threads, {dev}", flush=True)
    x = _batch(a.batch, a.seq, dev)
    xi = {k: v for k, v in x.items() if k != "labels"}
    torch.manual_seed(0)
    models = {r: build(r, dev) for r in ROWS}
    t_step = interleaved({r: (lambda m=m, o=o: step(m, o, x)) for r, (m, o) in models.items()}, a.rounds, a.steps, a.warmup, dev)
    del models
    # inference: base, unmerged LoRA (B made non-zero so the update is real), and the same LoRA merged and unloaded
    from peft_notes.core import get_peft_model
    from peft_notes.models import load_minilm
    from peft_notes.reparam import LoraConfig
    base = load_minilm(2)[0].to(dev).eval()
    lora = get_peft_model(load_minilm(2)[0].to(dev), LoraConfig(r=8, alpha=16, target_modules=["query", "value"])).eval()
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n: p.normal_(0, 0.02)
    merged = get_peft_model(load_minilm(2)[0].to(dev), LoraConfig(r=8, alpha=16, target_modules=["query", "value"]))
    merged.load_state_dict(lora.state_dict()); merged = merged.merge_and_unload().eval()
    with torch.no_grad():
        err = (merged(**xi).logits - lora(**xi).logits).abs().max().item()
        t_inf = interleaved({k: (lambda m=m: m(**xi)) for k, m in (("base", base), ("unmerged", lora), ("merged", merged))},
                            a.rounds, a.steps * 2, a.warmup, dev)
    del base, lora, merged
    t_mix, mix_err = mixed_batch_bench(xi, a.rounds, a.steps, a.warmup, dev)
    layer_s, layer_extra = layer_bench(a.rounds, a.steps, a.warmup, dev)
    mem = measure_memory(("ours", "full", "hf", "floor", "ours_ckpt"), a.batch, a.seq, 2 if a.quick else 6, a.device)
    key = "torch_increase_mb" if dev.type == "cuda" else "rss_increase_mb"
    ratios = {"ours / hf step": ratio(t_step, "ours", "hf"), "ours / floor step": ratio(t_step, "ours", "floor"),
              "ours / full memory": (mem["ours"][key] / mem["full"][key],) * 3,
              "merged / base inference": ratio(t_inf, "merged", "base"), "unmerged / base inference": ratio(t_inf, "unmerged", "base"),
              "ours / hf mixed-batch inference": ratio(t_mix, "ours", "hf")}
    extra = {"hf / floor step": ratio(t_step, "hf", "floor"), "ours / full step": ratio(t_step, "ours", "full"),
             "hf / full step": ratio(t_step, "hf", "full"), "floor / full memory": (mem["floor"][key] / mem["full"][key],) * 3,
             "hf / full memory": (mem["hf"][key] / mem["full"][key],) * 3,
             "ours / full training tensors": (mem["ours"]["tensors_mb"] / mem["full"]["tensors_mb"],) * 3,
             "layer: LoRA's own cost, ours / hf": (layer_extra,) * 3,
             "checkpointing: ours_ckpt / ours step": ratio(t_step, "ours_ckpt", "ours"),
             "checkpointing: ours_ckpt / full memory": (mem["ours_ckpt"][key] / mem["full"][key],) * 3,
             "checkpointing: ours_ckpt / floor memory": (mem["ours_ckpt"][key] / mem["floor"][key],) * 3,
             "checkpointing: saved activations, ours_ckpt / ours": (mem["ours_ckpt"]["saved_mb"] / mem["ours"]["saved_mb"],) * 3}
    med = lambda t: {k: statistics.median(v) for k, v in t.items()}
    print("\nmedian step (ms):    " + "  ".join(f"{r} {1000 * s:.1f}" for r, s in med(t_step).items()))
    print("median forward (ms): " + "  ".join(f"{r} {1000 * s:.1f}" for r, s in med(t_inf).items()) + f"   merged vs unmerged max |dlogit| {err:.1e}")
    print("mixed batch forward (ms): " + "  ".join(f"{r} {1000 * s:.1f}" for r, s in med(t_mix).items()) + f"   ours vs hf max |dlogit| {mix_err:.1e}")
    print("one 384x384 layer, 2048 tokens, forward+backward (ms): " + "  ".join(f"{r} {1000 * s:.2f}" for r, s in layer_s.items()))
    print(f"memory increase over pre-training ({key}, MB):  " + "  ".join(f"{r} {m[key]:.0f}" for r, m in mem.items()))
    print("training tensors (MB: saved activations + grads + optimizer state): " + "  ".join(
        f"{r} {m['saved_mb']:.0f}+{m['grad_mb']:.0f}+{m['optim_mb']:.0f}" for r, m in mem.items()))
    print(f"\n{'ratio (median of paired rounds)':<36} {'measured':>8} {'IQR':>13} {'goal':>7}")
    for k, (v, lo, hi) in ratios.items():
        g = GOALS[k]; ok = v <= g + (0.02 if g == 1.0 else 0)  # "1.00" means equal within timing noise (2%)
        print(f"{k:<36} {v:>8.3f} {lo:>6.3f}-{hi:<6.3f} {'<=' if g != 1.0 else '~ '}{g:>5.2f}  {'ok' if ok else 'MISSED'}")
    for k, (v, lo, hi) in extra.items(): print(f"{k:<36} {v:>8.3f} {lo:>6.3f}-{hi:<6.3f}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"provenance": provenance(methods=["lora", "full"]), "args": vars(a), "step_s": t_step, "inference_s": t_inf, "mixed_batch_s": t_mix, "mixed_batch_err": mix_err, "layer_s": layer_s, "memory": mem,
                                           "ratios": ratios, "extra": extra, "merge_err": err, "threads": torch.get_num_threads()}, indent=1))
    return ratios

if __name__ == "__main__":
    main()
