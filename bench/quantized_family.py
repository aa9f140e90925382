"""The quantized family's SST-2 table and its costs, on the shipped MiniLM (chapter *The quantized family*).

    .venv/bin/python bench/quantized_family.py accuracy --out results/sst2_quantized_family.json   # about an hour on 2 cores
    .venv/bin/python bench/quantized_family.py cost --out results/quantized_family_cost_cpu.json    # about 5 minutes
    .venv/bin/python bench/quantized_family.py bitdelta --out results/sst2_bitdelta.json            # about 15 minutes

`accuracy`: every row trained by the harness as the other families' tables are (`run_method`: SST-2, 8,000 training
sentences, 2 epochs, batch 32, seq 64, seed 0, lr 3e-3, the new head trained in full), its adapter saved, then what
the row needs beyond the harness: QA-LoRA's accuracy after merging into the zero points (reloaded onto a fresh
full-precision MiniLM, merged, the linear layers checked to be INT4 `QuantizedLinear`s), QDyLoRA's accuracy at each
rank from 1 to 8 from its one run, and every row's base bytes (linear weights as stored, and the whole model).

`bitdelta`: the full fine-tune BitDelta compresses, trained by the harness's loop at its recipe for `full` (every
weight, lr 1e-4); then `bitdelta_from` (every linear layer's delta as sign x alpha, the new head copied), the dev
accuracy before and after `distill_scales` (only the alphas train, the fine-tune's logits the target, on the training
sentences without their labels; Adam at 1e-5 for 200 steps: MiniLM's alphas are of order 1e-4 to 1e-3, and a step of
1e-4 moves one by its own size), and the bytes of each: the fine-tune's weights against the adapter's file.

`cost`: training memory counted from the tensors in a fresh process per row (what the model stores, the activations
saved for backward, gradients, AdamW state: `bench/qlora_bench.py`'s accounting), and step times with every row's
steps interleaved in one process (one batch of 32 x 64 tokens), PEFT's QLoRA over bitsandbytes among them.
"""
import argparse, json, statistics, subprocess, sys, tempfile, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).parent))
from lora_bench import _batch, tensor_bytes
from qlora_bench import build as qlora_bench_build, stored_bytes

ALL_NF2 = {"quantization": {"quant_type": "nf2"}, "target_modules": "all-linear"}   # at 2 bits LoRA goes on every linear layer, as LoftQ's paper does
ROWS = {  # row: (registered method, config overrides beyond the harness's recipe)
    "lora": ("lora", {}),                                   # the fp32 base
    "qlora": ("qlora", {}),                                 # NF4 + double quantization
    "loftq": ("loftq", {"loftq_iter": 5}),
    "qlora_nf2": ("qlora", ALL_NF2),
    "loftq_nf2": ("loftq", {**ALL_NF2, "loftq_iter": 5}),
    "qa_lora": ("qa_lora", {}),                             # INT4, groups of 32, zero points; also evaluated merged
    "peqa": ("peqa", {}),                                   # INT4 per channel; the scales train
    "qdylora": ("qdylora", {}),                             # also evaluated at each rank
    "ir_qlora": ("ir_qlora", {}),                           # NF4 + DQ with ICQ (101-point search), LoRA with IEC
    "lq_lora_3bit": ("lq_lora", {"bit_budget": 3.0}),        # every quantized matrix's format chosen from NF2/4/8 x blocks 64/32/16, 3 bits a weight on average
}

def base_bytes(model)->dict:
    from peft_notes.methods.quantized.formats import QuantReport
    r = QuantReport.of(model.base_model if hasattr(model, "base_model") else model)
    return {"base_linear_bytes": r.linear, "base_total_bytes": r.total}

def _test_loader(folder):
    from peft_notes.harness import load_task
    from peft_notes.data import tokenize
    from peft_notes.train import make_loader
    from peft_notes.models import load_minilm
    from datasets import DatasetDict
    t = json.loads((Path(folder) / "task.json").read_text())
    ds, col, n = load_task(t["task"], seed=t["seed"])
    base, tok = load_minilm(num_labels=t["num_labels"])
    enc = tokenize(DatasetDict({"test": ds["test"]}), tok, text_column=col, max_length=t["max_length"])
    return base, make_loader(enc["test"], tok, 128)

def accuracy(out, rows, train_size, epochs):
    from peft_notes.harness import run_method
    from peft_notes.core import PeftModel
    from peft_notes.train import evaluate
    from peft_notes.methods.quantized.formats import QuantizedLinear
    from peft_notes.methods.reparameterized.rank_adaptive import set_rank
    results = json.loads(Path(out).read_text()) if out and Path(out).exists() else []
    done = {r["row"] for r in results}
    for name in rows:
        if name in done: continue
        method, cfg = ROWS[name]
        with tempfile.TemporaryDirectory() as d:
            r = {"row": name, **run_method(method, "sst2", train_size=train_size, epochs=epochs, config=cfg, save=d, progress=False)}
            base, loader = _test_loader(d)
            pm = PeftModel.from_pretrained(base, d)
            r.update(base_bytes(pm))
            if method == "qa_lora":
                pm.merge_adapter()
                plain = pm.merge_and_unload()
                assert all(isinstance(m, QuantizedLinear) for n, m in plain.named_modules() if type(m).__name__ in ("Linear", "QuantizedLinear") and "classifier" not in n)
                r["acc_merged"] = evaluate(plain, loader)
            if method == "qdylora":
                r["acc_by_rank"] = {}
                for b in range(1, pm.peft_config["default"].r + 1):
                    set_rank(pm, b); r["acc_by_rank"][b] = evaluate(pm, loader)
        results.append(r)
        print(f"{name:<10} acc {r['acc_after']:.4f}" + (f" merged {r['acc_merged']:.4f}" if "acc_merged" in r else "")
              + (f" by rank {r['acc_by_rank']}" if "acc_by_rank" in r else "") + f"  base linear {r['base_linear_bytes'] / 2**20:.1f} MiB, adapter {r['stored_bytes'] / 1024:.0f} KiB", flush=True)
        if out: Path(out).parent.mkdir(parents=True, exist_ok=True); Path(out).write_text(json.dumps(results, indent=1))
    return results

def bitdelta(out, train_size, epochs, distill_steps, distill_lr, batch=32, seq=64):
    from datasets import DatasetDict
    from peft_notes.data import tokenize
    from peft_notes.harness import LR, build_model, load_task, provenance, stored_bytes as adapter_bytes
    from peft_notes.methods.quantized.low_bit import BitDeltaConfig, bitdelta_from, distill_scales
    from peft_notes.models import load_minilm
    from peft_notes.train import evaluate, fit, make_loader
    ds, col, n = load_task("sst2", train_size, 0)
    full, tok = build_model("full", n, 0)
    enc = tokenize(ds, tok, text_column=col, max_length=seq)
    train_dl, test_dl = make_loader(enc["train"], tok, batch, shuffle=True, seed=0), make_loader(enc["test"], tok, 128)
    h = fit(full, train_dl, test_dl, epochs=epochs, lr=LR["full"], seed=0, progress=False)
    full.eval()
    pm = bitdelta_from(load_minilm(num_labels=n, seed=0)[0], full, BitDeltaConfig(modules_to_save=["classifier"]))
    acc_sign = evaluate(pm, test_dl)
    alpha0 = [l.bitdelta_alpha["default"].item() for n_, l in pm.named_modules() if hasattr(l, "bitdelta_alpha")]
    unlabelled = [{k: v for k, v in b.items() if k != "labels"} for b, _ in zip(train_dl, range(distill_steps))]
    losses = distill_scales(pm, full, unlabelled, steps=distill_steps, lr=distill_lr)
    alpha1 = [l.bitdelta_alpha["default"].item() for n_, l in pm.named_modules() if hasattr(l, "bitdelta_alpha")]
    r = {"row": "bitdelta", "task": "sst2", "train_size": len(enc["train"]), "epochs": epochs, "lr_full": LR["full"], "batch_size": batch, "max_length": seq,
         "acc_full": h.final_accuracy, "acc_bitdelta": acc_sign, "acc_distilled": evaluate(pm, test_dl),
         "full_bytes": sum(p.numel() * p.element_size() for p in full.parameters()), "bitdelta_bytes": adapter_bytes(pm),
         "distill_steps": distill_steps, "distill_lr": distill_lr, "distill_losses": losses, "alpha_before": alpha0, "alpha_after": alpha1,
         "full_train_s": h.seconds, "full_losses": h.losses, "provenance": provenance(methods=["bitdelta", "harness"])}
    print(f"full {r['acc_full']:.4f}  bitdelta {r['acc_bitdelta']:.4f}  distilled {r['acc_distilled']:.4f}  "
          f"(distill loss {losses[0]:.4f} -> {losses[-1]:.4f});  {r['full_bytes'] / 2**20:.1f} MiB -> {r['bitdelta_bytes'] / 2**20:.2f} MiB", flush=True)
    if out: Path(out).parent.mkdir(parents=True, exist_ok=True); Path(out).write_text(json.dumps(r, indent=1))
    return r

def build(row:str):
    "The model of one cost row, in train mode before any forward (bitsandbytes' repack trap)."
    if row == "peft_qlora": return qlora_bench_build("peft_qlora")
    from peft_notes.core import get_peft_model
    from peft_notes.harness import method_config
    from peft_notes.models import load_minilm
    method, cfg = ROWS[row]
    return get_peft_model(load_minilm(num_labels=2)[0], method_config(method, cfg)).train()

def child(row:str, batch:int, seq:int, steps:int):
    from peft_notes.train import PeakMemory, _rss_mb
    model = build(row)
    x = _batch(batch, seq, torch.device("cpu"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    before = _rss_mb()
    with PeakMemory(every=0.005) as mem:
        for _ in range(steps):
            model(**x).loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    print(json.dumps({"row": row, "stored_mb": stored_bytes(model) / 2**20, "rss_increase_mb": mem.peak - before, **tensor_bytes(model, opt, x)}))

def cost(out, rows, batch, seq, steps, rounds):
    from peft_notes.train import provenance
    rows = list(rows) + ["peft_qlora"]
    res = {"settings": {"batch": batch, "seq": seq, "steps": steps, "rounds": rounds}, "memory": {}}
    for r in rows:
        p = subprocess.run([sys.executable, __file__, "child", "--row", r, "--batch", str(batch), "--seq", str(seq), "--steps", str(steps)], capture_output=True, text=True)
        if p.returncode: raise RuntimeError(f"memory run of {r} failed:\n{p.stderr[-3000:]}")
        res["memory"][r] = m = json.loads(p.stdout.strip().splitlines()[-1])
        m["training_mb"] = m["stored_mb"] + m["saved_mb"] + m["grad_mb"] + m["optim_mb"]
        print(f"{r:<11} stored {m['stored_mb']:6.1f} MB + saved {m['saved_mb']:5.1f} + grads {m['grad_mb']:4.1f} + AdamW {m['optim_mb']:4.1f} = {m['training_mb']:6.1f} MB", flush=True)
    models = {r: build(r) for r in rows}
    x = _batch(batch, seq, torch.device("cpu"))
    opts = {r: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4) for r, m in models.items()}
    times = {r: [] for r in rows}
    for i in range(rounds + 2):
        for r, m in models.items():
            t0 = time.perf_counter(); m(**x).loss.backward(); opts[r].step(); opts[r].zero_grad(set_to_none=True)
            if i >= 2: times[r].append(time.perf_counter() - t0)
    res["step_s"] = {r: statistics.median(t) for r, t in times.items()}
    res["provenance"] = provenance(methods=sorted({ROWS[r][0] for r in rows if r in ROWS}))
    print({k: f"{v * 1000:.0f} ms" for k, v in res["step_s"].items()})
    if out: Path(out).parent.mkdir(parents=True, exist_ok=True); Path(out).write_text(json.dumps(res, indent=1))
    return res

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=["accuracy", "cost", "bitdelta", "child"])
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows (default: all)")
    ap.add_argument("--train-size", type=int, default=8000); ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--batch", type=int, default=32); ap.add_argument("--seq", type=int, default=64); ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=10); ap.add_argument("--row", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--distill-steps", type=int, default=200); ap.add_argument("--distill-lr", type=float, default=1e-5)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    rows = [r for r in a.rows.split(",") if r]
    if (bad := [r for r in rows if r not in ROWS]): raise SystemExit(f"unknown rows {bad}; known: {list(ROWS)}")
    if a.part == "child": return child(a.row, a.batch, a.seq, a.steps)
    if a.part == "cost": return cost(a.out, rows, a.batch, a.seq, a.steps, a.rounds)
    if a.part == "bitdelta": return bitdelta(a.out, a.train_size, a.epochs, a.distill_steps, a.distill_lr, a.batch, a.seq)
    return accuracy(a.out, rows, a.train_size, a.epochs)

if __name__ == "__main__":
    main()
