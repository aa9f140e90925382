"""NOAH on the shipped MiniLM: train the supernet once, search its sub-networks by evolution under a parameter limit.

    PEFT_NOTES_DATA=../shared/data .venv/bin/python bench/noah_search.py --out results/noah_sst2.json   # ~30 min on 2 cores

The supernet (`peft_notes.methods.hybrid.noah.NOAHSupernetConfig`: in each of MiniLM's 6 blocks an adapter, a LoRA on
W_q and W_v and a prompt, each at its largest choice) trains with the harness's loop on SST-2's training sentences,
a random sub-network each step. The evolution (`noah_search`) then scores sub-networks within `--limit` trainable
parameters by the supernet's accuracy on other training sentences with that sub-network switched on — SST-2's dev
set is left for the retrained sub-network's row in the family's table. The new 2-way head trains in full and is
not counted. The file is rewritten after every scored sub-network; at the end it prints the command that retrains
the one found from scratch (the paper's last step) with `peft-notes compare`.
"""
import argparse, json, time
from pathlib import Path

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="sst2"); ap.add_argument("--train-size", type=int, default=8000); ap.add_argument("--search-valid", type=int, default=1000)
    ap.add_argument("--epochs", type=float, default=2.0); ap.add_argument("--lr", type=float, default=3e-3); ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--choices", default="0,5,10,25,50", help="the sizes each module may take in each layer (adapter units, LoRA rank, prompt length)")
    ap.add_argument("--limit", type=int, default=200_000, help="the most trainable parameters a sub-network may have (the head not counted)")
    ap.add_argument("--population", type=int, default=10); ap.add_argument("--generations", type=int, default=5); ap.add_argument("--parents", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0); ap.add_argument("--out", default="results/noah_sst2.json")
    a = ap.parse_args(argv)
    import torch
    from search_setup import search_data
    from peft_notes.core import get_peft_model
    from peft_notes.models import load_minilm
    from peft_notes.train import fit, evaluate, make_loader, provenance
    from peft_notes.methods.hybrid.noah import NOAHSupernetConfig, noah_params, noah_search, set_subnet
    data = search_data(a.task, a.train_size, a.search_valid, seed=a.seed, max_length=a.max_length)
    enc, tok = data.enc, data.tok
    model, _ = load_minilm(num_labels=data.n_labels, seed=a.seed)
    choices = [int(x) for x in a.choices.split(",")]
    cfg = NOAHSupernetConfig(adapter_choices=choices, lora_choices=choices, prompt_choices=choices, seed=a.seed, modules_to_save=["classifier"])
    torch.manual_seed(a.seed); sup = get_peft_model(model, cfg)
    out = {"settings": vars(a), "provenance": provenance(methods=["noah", "harness"]), "supernet": {"config": cfg.to_dict(), "trainable": sup.trainable_report().trainable}}
    t0 = time.perf_counter()
    h = fit(sup, make_loader(enc["train"], tok, 32, shuffle=True, seed=a.seed), epochs=a.epochs, lr=a.lr, seed=a.seed, progress=False)
    out["supernet"].update(seconds=time.perf_counter() - t0, losses=h.losses[::10])
    print(f"supernet: {len(h.losses)} steps in {out['supernet']['seconds']:.0f}s, loss {sum(h.losses[:20]) / 20:.3f} -> {sum(h.losses[-20:]) / 20:.3f}", flush=True)
    sup.eval(); loader = make_loader(enc["test"], tok, 128)
    d = model.config.hidden_size
    count = lambda s: noah_params(d, s["adapter"], s["lora"], s["prompt"])
    out["largest"] = {"params": count({k: [max(choices)] * 6 for k in ("adapter", "lora", "prompt")})}
    set_subnet(sup, None); out["largest"]["accuracy"] = evaluate(sup, loader)
    scored = []
    def score(s):
        set_subnet(sup, s); acc = evaluate(sup, loader)
        scored.append({**s, "params": count(s), "accuracy": acc}); out["scored"] = scored; Path(a.out).write_text(json.dumps(out, indent=1))
        print(f"{len(scored)}: acc {acc:.3f} params {count(s):,} {s}", flush=True)
        return acc
    t0 = time.perf_counter()
    r = noah_search(score, n_layers=6, choices=cfg.choices(), params=count, limit=a.limit, population=a.population,
                    generations=a.generations, parents=a.parents, seed=a.seed)
    out.update(search_seconds=time.perf_counter() - t0, history=r["history"], best=r["best"], best_params=r["params"], best_supernet_accuracy=r["score"])
    sets = [f"--set noah.{f}={json.dumps(r['best'][k]).replace(' ', '')}" for k, f in (("adapter", "adapter_sizes"), ("lora", "ranks"), ("prompt", "prompt_lengths"))]
    sets[1] = sets[1].replace("noah.ranks", "noah.lora_ranks")
    out["retrain_command"] = f"peft-notes compare --task {a.task} --train-size {a.train_size} --epochs {a.epochs:g} --methods noah --lr noah={a.lr:g} " + " ".join(sets)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print("found", r["best"], f"{r['params']:,} params, supernet accuracy {r['score']:.3f}\nretrain: {out['retrain_command']}")

if __name__ == "__main__": main()
