"""Intrinsic dimension: fine-tune MiniLM on SST-2 inside a random d-dimensional subspace (Aghajanyan et al., ACL 2021).

    .venv/bin/python bench/intrinsic_dim.py --out results/intrinsic_dim_sst2.json     # ~25 min on 2 cores

Li et al. (ICLR 2018) and Aghajanyan et al. (ACL 2021, "Intrinsic SAID") train θ = θ₀ + V z with V a fixed random
D×d projection (Fastfood) and only z ∈ ℝᵈ trained; the smallest d that reaches 90% of full fine-tuning's score
is the task's intrinsic dimension d₉₀. Here the projection moves the query and value weight matrices of all six
layers of the shipped MiniLM (D = 6 × 2 × 384 × 384 = 1,769,472, the matrices LoRA adapts), the 2-way head
trains in full in every row (d = 0 is the head alone), and the reference is the same matrices trained
directly. SST-2 through the book's harness: the same data, seed, epochs and head as bench/which_matrices.py.
Adam moves every coordinate of z by about lr a step, so V z moves θ by about lr·√d: each d is tried at
lr = c/√d for every --lr-scales c (a step of about c in θ-space), and the table keeps every run.
"""
import argparse, json, time
from pathlib import Path
import torch
from peft_notes.reparam import RandomSubspace
from peft_notes.train import load_task, provenance, fit, make_loader, evaluate, LR
from peft_notes.data import tokenize
from peft_notes.models import load_minilm

def qv_names(model): return [n for n, _ in model.named_parameters() if n.endswith(("query.weight", "value.weight"))]

def run(d, lr, data, a):
    ds, col, n = data
    model, tok = load_minilm(num_labels=n, seed=a.seed)
    model.requires_grad_(False); model.classifier.requires_grad_(True)
    names = qv_names(model)
    enc = tokenize(ds, tok, text_column=col, max_length=64)
    train_dl = make_loader(enc["train"], tok, 32, shuffle=True, seed=a.seed); test_dl = make_loader(enc["test"], tok, 128)
    head = list(model.classifier.parameters())
    if d == "full":
        for nme, p in model.named_parameters():
            if nme in names: p.requires_grad_(True)
        groups = [{"params": [p for nme, p in model.named_parameters() if nme in names], "lr": lr}]; net = model
    elif d == 0: groups, net = [], model
    else:
        net = RandomSubspace(model, d, names, seed=a.seed); groups = [{"params": [net.z], "lr": lr}]
    opt = torch.optim.AdamW(groups + [{"params": head, "lr": LR["head"]}], weight_decay=0.0)
    t0 = time.perf_counter()
    h = fit(net, train_dl, test_dl, epochs=a.epochs, seed=a.seed, progress=False, optimizer=opt)
    D = sum(p.numel() for nme, p in model.named_parameters() if nme in names)
    return {"d": d, "lr": lr, "D": D, "acc": h.final_accuracy, "loss_first": sum(h.losses[:10]) / 10, "loss_last": sum(h.losses[-10:]) / 10,
            "c": lr * d ** 0.5 if isinstance(d, int) else None, "median_step_s": h.median_step_s, "train_s": time.perf_counter() - t0, "seed": a.seed}

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/intrinsic_dim_sst2.json")
    ap.add_argument("--train-size", type=int, default=4000)
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dims", nargs="+", default=["0", "10", "100", "1000", "10000", "full"])
    ap.add_argument("--lr-scales", type=float, nargs="+", default=[0.3, 3.0], help="c in lr = c/sqrt(d)")
    ap.add_argument("--full-lrs", type=float, nargs="+", default=[1e-4, 3e-4])
    ap.add_argument("--resume", help="a log of an interrupted run: its printed rows are kept, not re-run")
    a = ap.parse_args(argv)
    done = [json.loads(l) for l in Path(a.resume).read_text().splitlines() if l.startswith('{"d"')] if a.resume else []
    data = load_task("sst2", a.train_size, a.seed)
    rows = []
    for d in a.dims:
        d = d if d == "full" else int(d)
        for lr in (a.full_lrs if d == "full" else [0.0] if d == 0 else [c / d ** 0.5 for c in a.lr_scales]):
            old = next((r for r in done if r["d"] == d and r["lr"] == lr), None)
            rows.append(old or run(d, lr, data, a)); print(json.dumps(rows[-1]), flush=True)
    best = {}
    for r in rows: best[r["d"]] = max(best.get(r["d"], 0.0), r["acc"])
    out = {"task": "sst2", "train_size": a.train_size, "epochs": a.epochs, "seed": a.seed, "targets": "query.weight, value.weight (6 layers)",
           "rows": rows, "best": {str(k): v for k, v in best.items()}, "provenance": provenance(methods=["harness"])}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True); Path(a.out).write_text(json.dumps(out, indent=1))
    for k, v in best.items(): print(f"d={k!s:>6}  best acc {v:.4f}")

if __name__ == "__main__":
    main()
