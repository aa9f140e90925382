"""Inference cost of the additive family, as ratios to the base model measured in one run; AdapterDrop's speed-up.

    .venv/bin/python bench/additive_bench.py --out results/additive_bench_cpu.json      # about 6 minutes on 2 cores
    .venv/bin/python bench/additive_bench.py --quick                                     # a smoke run at a tiny size

The shipped MiniLM (6 blocks, width 384), a batch of 32 sequences of 64 tokens, forward only, in eval mode under
`torch.no_grad()`. Each method at its defaults on MiniLM: the bottleneck adapters at m = 384/16 = 24 (Houlsby: two
per block; Pfeiffer, the residual adapter: one; the parallel adapter beside each feed-forward; Compacter: Houlsby's
placement with PHM projections), prompt and prefix tuning with 20 virtual tokens, (IA)³ unmerged and merged into the
weights (`merge_and_unload`), LoRA (r = 8 on query and value) unmerged and merged. AdapterDrop: Houlsby's adapters
in the upper half of the blocks only (`adapter_drop=3`), at inference and for a training step (forward, backward,
AdamW), against Houlsby in every block.

Timings are interleaved and paired (`bench/lora_bench.py`'s `interleaved`/`ratio`): every round runs every row a few
times in a rotated order; a ratio is the median over rounds of that round's ratio, with its interquartile range.
"""
import argparse, json, sys, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).parent))
from lora_bench import _batch, interleaved, ratio
from peft_notes.core import get_peft_model, list_methods
from peft_notes.train import provenance

ROWS = {  # row -> (registry name, config fields, merge?)
    "houlsby": ("houlsby", {}, False), "pfeiffer": ("pfeiffer", {}, False), "residual_adapter": ("residual_adapter", {}, False),
    "parallel_adapter": ("parallel_adapter", {}, False), "compacter": ("compacter", {}, False),
    "prompt_tuning (20)": ("prompt_tuning", {"num_virtual_tokens": 20}, False), "prefix_tuning (20)": ("prefix_tuning", {"num_virtual_tokens": 20}, False),
    "ia3 unmerged": ("ia3", {}, False), "ia3 merged": ("ia3", {}, True),
    "lora unmerged": ("lora", {"r": 8, "alpha": 16}, False), "lora merged": ("lora", {"r": 8, "alpha": 16}, True),
    "houlsby, adapter_drop=3": ("houlsby", {"adapter_drop": 3}, False),
}

def build(row, make_base, init_off=True):
    "The model of one row, in eval mode; adapters moved off their identity init so that they compute something."
    base = make_base()
    if row == "base": return base.eval()
    method, kw, merge = ROWS[row]
    pm = get_peft_model(base, list_methods()[method](**kw))
    if init_off:
        with torch.no_grad():
            for p in pm.parameters():
                if p.requires_grad: p.add_(torch.randn_like(p) * 1e-3)
    return (pm.merge_and_unload() if merge else pm).eval()

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a tiny BERT and 2 rounds: checks the script runs")
    a = ap.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    if a.quick:
        from peft_notes.models import tiny_bert
        make_base, (batch, seq), a.rounds, a.steps = (lambda: tiny_bert(num_hidden_layers=6, hidden_size=64, num_attention_heads=4, intermediate_size=128, vocab_size=30522, max_position_embeddings=128)), (4, 16), 2, 1
    else:
        from peft_notes.models import load_minilm
        make_base, (batch, seq) = (lambda: load_minilm(2)[0]), (32, 64)
    dev = torch.device("cpu")
    x = _batch(batch, seq, dev); x_in = {k: v for k, v in x.items() if k != "labels"}
    models = {r: build(r, make_base) for r in ["base", *ROWS]}
    def fwd(m):
        def f():
            with torch.no_grad(): m(**x_in)
        return f
    t = interleaved({r: fwd(m) for r, m in models.items()}, a.rounds, a.steps, 1, dev)
    infer = {f"{r} / base": ratio(t, r, "base") for r in ROWS}
    # AdapterDrop in training: a step (forward, backward, AdamW) with and without the lower half's adapters
    train = {r: build(r, make_base).train() for r in ("houlsby", "houlsby, adapter_drop=3")}
    opts = {r: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4) for r, m in train.items()}
    def step(r):
        def f():
            loss = train[r](**x).loss; loss.backward(); opts[r].step(); opts[r].zero_grad(set_to_none=True)
        return f
    ts = interleaved({r: step(r) for r in train}, a.rounds, a.steps, 1, dev)
    drop = {"AdapterDrop (lower 3 of 6 blocks) / Houlsby, inference": ratio(t, "houlsby, adapter_drop=3", "houlsby"),
            "AdapterDrop (lower 3 of 6 blocks) / Houlsby, training step": ratio(ts, "houlsby, adapter_drop=3", "houlsby")}
    trainable = {r: sum(p.numel() for p in m.parameters() if p.requires_grad) for r, m in models.items() if r != "base" and not ROWS[r][2]}
    out = {"args": vars(a), "batch": [batch, seq], "inference": infer, "adapter_drop": drop, "trainable": trainable,
           "base_forward_s": sorted(t["base"])[len(t["base"]) // 2], "provenance": provenance(methods=sorted({m for m, _, _ in ROWS.values()}))}
    for k, (m, lo, hi) in {**infer, **drop}.items(): print(f"{k:62s} {m:6.3f}  {lo:.3f}-{hi:.3f}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True); Path(a.out).write_text(json.dumps(out, indent=1))
    return out

if __name__ == "__main__":
    main()
