"""The merging chapter's stored results (chapter *Merging adapters*).

    PEFT_NOTES_DATA=../shared/data python bench/merging.py dare --out results/sst2_dare.json

`dare`: DARE's claim on a real adapter. MiniLM with the harness's LoRA (r = 8, α = 16 on query and value, the head
trained) on SST-2 by the harness recipe (8,000 sentences, 2 epochs, lr 3e-3, seed 0); then its weight change kept at
density ρ three ways — DARE (random drops, rescaled by 1/ρ; three seeds), the same drops without the rescale, and the
largest magnitudes — each written as a LoRA by `merge_adapters` with the trained head copied, scored on SST-2's dev set."""
import argparse, json, sys
from pathlib import Path
import torch

def dare(out, train_size=8000, epochs=2, densities=(0.5, 0.3, 0.1, 0.03, 0.01), seeds=(0, 1, 2), batch=32, seq=64):
    from peft_notes.data import tokenize
    from peft_notes.harness import LR, build_model, load_task, provenance
    from peft_notes.methods.multitask.merging import adapter_layers, merge_adapters
    from peft_notes.train import evaluate, fit, make_loader
    ds, col, n = load_task("sst2", train_size, 0)
    pm, tok = build_model("lora", n, 0)
    enc = tokenize(ds, tok, text_column=col, max_length=seq)
    train_dl, test_dl = make_loader(enc["train"], tok, batch, shuffle=True, seed=0), make_loader(enc["test"], tok, 128)
    h = fit(pm, train_dl, test_dl, epochs=epochs, lr=LR["lora"], seed=0, progress=False)
    name = pm.active_adapter
    deltas = torch.cat([l.get_delta_weight(name).detach().flatten() for l in adapter_layers(pm, name).values()]).abs()
    rows = []
    def score(kind, rho, seed, how, weight):
        merge_adapters(pm, [name], [weight], how, new_name="kept", density=rho, seed=0 if seed is None else seed, heads_from=name)
        pm.set_adapter("kept"); acc = evaluate(pm, test_dl); pm.set_adapter(name); pm.delete_adapter("kept")
        rows.append({"kind": kind, "density": rho, "seed": seed, "accuracy": acc})
        print(f"{kind:24s} density {rho:<5} seed {seed}: {acc:.4f}", flush=True)
    for rho in densities:
        for s in seeds: score("dare", rho, s, "dare_linear", 1.0)
        score("dropped_not_rescaled", rho, seeds[0], "dare_linear", rho)   # weight ρ cancels the 1/ρ
        score("largest_kept", rho, None, "magnitude_prune", 1.0)
    r = {"task": "sst2", "train_size": len(enc["train"]), "epochs": epochs, "lr": LR["lora"], "batch_size": batch, "max_length": seq,
         "acc_source": h.final_accuracy, "delta_abs": {"max": deltas.max().item(), "mean": deltas.mean().item(), "median": deltas.median().item(),
                                                        "share_within_0.002": (deltas <= 0.002).float().mean().item(), "entries": deltas.numel()},
         "rows": rows, "train_s": h.seconds, "losses": h.losses, "provenance": provenance(methods=["lora", "harness"])}
    print(f"source {r['acc_source']:.4f}; |dW| max {r['delta_abs']['max']:.4f}, median {r['delta_abs']['median']:.5f}", flush=True)
    if out: Path(out).parent.mkdir(parents=True, exist_ok=True); Path(out).write_text(json.dumps(r, indent=1))
    return r

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["dare"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--train-size", type=int, default=8000)
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--densities", default="0.5,0.3,0.1,0.03,0.01"); ap.add_argument("--seeds", default="0,1,2")
    a = ap.parse_args()
    if a.what == "dare": dare(a.out, a.train_size, a.epochs, [float(x) for x in a.densities.split(",")], [int(x) for x in a.seeds.split(",")])
