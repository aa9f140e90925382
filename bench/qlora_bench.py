"""QLoRA's training cost on the shipped MiniLM: ours over our NF4 base, against LoRA on the fp32 base and Hugging Face PEFT's QLoRA over a bitsandbytes base.

    .venv/bin/python bench/qlora_bench.py --out results/qlora_bench_cpu.json    # about 3 minutes on 2 cores

Three rows, each built as a user would: `lora` (ours, fp32 MiniLM), `qlora` (ours: `get_peft_model(minilm, QLoraConfig(...))`
quantizes every linear layer but the head to NF4 with double quantization) and `peft_qlora` (MiniLM loaded through
transformers with `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)`,
the head skipped, then PEFT's `LoraConfig`); all three LoRA r = 8, α = 16 on the query and value matrices, the 2-way
head trained in full, AdamW, one batch of 32 x 64 tokens, fp32 compute.

Memory, in a fresh process per row: the bytes of everything the model stores (parameters and buffers, and
bitsandbytes' quantization constants, which are neither), and what training holds besides (activations saved for
backward as distinct storages, gradients, AdamW state), counted from the tensors; and the increase of resident
memory over training (sampled), which the allocator blurs. Step time: the three models in one process, their
steps interleaved (A, B, C, A, B, C, ...), so that load on the machine falls on all; medians after a warm-up.
"""
import argparse, json, statistics, subprocess, sys, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).parent))
from lora_bench import _batch, tensor_bytes

ROWS = ("lora", "qlora", "peft_qlora")

def build(row:str):
    "The model of one row, in train mode before any forward (bitsandbytes' repack trap: see chapter 50)."
    from peft_notes.core import get_peft_model
    from peft_notes.models import load_minilm, minilm_path
    lora = dict(r=8, alpha=16, target_modules=["query", "value"], modules_to_save=["classifier"])
    if row == "lora":
        from peft_notes.methods.reparameterized.lora import LoraConfig
        return get_peft_model(load_minilm(num_labels=2)[0], LoraConfig(**lora)).train()
    if row == "qlora":
        from peft_notes.methods.quantized.qlora import QLoraConfig
        return get_peft_model(load_minilm(num_labels=2)[0], QLoraConfig(**lora)).train()
    import peft
    from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32,
                           llm_int8_skip_modules=["classifier"])
    torch.manual_seed(0)
    m = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2, quantization_config=q, device_map="cpu").train()
    return peft.get_peft_model(m, peft.LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], modules_to_save=["classifier"])).train()

def stored_bytes(model)->int:
    "Bytes of every tensor the model stores: parameters, buffers, and bitsandbytes' quantization state (absmax, its codes, code books)."
    seen, total = set(), 0
    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr()); total += t.untyped_storage().nbytes()
    for t in [*model.parameters(), *model.buffers()]:
        add(t); qs = getattr(t, "quant_state", None)
        if qs is not None:
            for v in (qs.absmax, qs.code, getattr(qs.state2, "absmax", None) if qs.state2 is not None else None,
                      getattr(qs.state2, "code", None) if qs.state2 is not None else None): add(v)
    return total

def child(row:str, batch:int, seq:int, steps:int):
    from peft_notes.train import PeakMemory, _rss_mb, provenance
    model = build(row)
    x = _batch(batch, seq, torch.device("cpu"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    before = _rss_mb()
    with PeakMemory(every=0.005) as mem:
        for _ in range(steps):
            model(**x).loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    grads = {n: p.grad is not None for n, p in model.named_parameters() if p.requires_grad}
    print(json.dumps({"row": row, "stored_mb": stored_bytes(model) / 2**20, "rss_increase_mb": mem.peak - before, **tensor_bytes(model, opt, x),
                      "provenance": provenance(sys.argv, methods=["lora", "qlora"] if row != "peft_qlora" else [])}))

def interleaved(batch:int, seq:int, rounds:int)->dict:
    "Median step time of each row, the rows' steps interleaved in one process."
    models = {r: build(r) for r in ROWS}
    x = _batch(batch, seq, torch.device("cpu"))
    opts = {r: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4) for r, m in models.items()}
    times = {r: [] for r in ROWS}
    for i in range(rounds + 2):
        for r, m in models.items():
            t0 = time.perf_counter(); m(**x).loss.backward(); opts[r].step(); opts[r].zero_grad(set_to_none=True)
            if i >= 2: times[r].append(time.perf_counter() - t0)
    return {r: statistics.median(t) for r, t in times.items()}

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32); ap.add_argument("--seq", type=int, default=64); ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=10); ap.add_argument("--out", default=None); ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child: return child(a.child, a.batch, a.seq, a.steps)
    from peft_notes.train import provenance
    out = {"settings": vars(a), "memory": {}}
    for r in ROWS:
        p = subprocess.run([sys.executable, __file__, "--child", r, "--batch", str(a.batch), "--seq", str(a.seq), "--steps", str(a.steps)], capture_output=True, text=True)
        if p.returncode: raise RuntimeError(f"memory run of {r} failed:\n{p.stderr[-3000:]}")
        out["memory"][r] = m = json.loads(p.stdout.strip().splitlines()[-1]); m.pop("provenance")
        m["training_mb"] = m["stored_mb"] + m["saved_mb"] + m["grad_mb"] + m["optim_mb"]
        print(f"{r:<11} stored {m['stored_mb']:6.1f} MB + saved {m['saved_mb']:5.1f} + grads {m['grad_mb']:4.1f} + AdamW {m['optim_mb']:4.1f} = {m['training_mb']:6.1f} MB   RSS +{m['rss_increase_mb']:.0f} MB", flush=True)
    out["step_s"] = interleaved(a.batch, a.seq, a.rounds)
    s = out["step_s"]
    out["ratios"] = {"qlora/lora training memory": out["memory"]["qlora"]["training_mb"] / out["memory"]["lora"]["training_mb"],
                     "qlora/lora step": s["qlora"] / s["lora"], "qlora/peft_qlora step": s["qlora"] / s["peft_qlora"]}
    out["provenance"] = provenance(methods=["lora", "qlora"])
    print({k: f"{v * 1000:.0f} ms" for k, v in s.items()}, {k: round(v, 3) for k, v in out["ratios"].items()})
    if a.out: Path(a.out).parent.mkdir(parents=True, exist_ok=True); Path(a.out).write_text(json.dumps(out, indent=1))
    return out

if __name__ == "__main__":
    main()
