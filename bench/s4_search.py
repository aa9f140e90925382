"""S⁴'s stage-wise search on the shipped MiniLM: the grouping pattern first, then each group's strategies.

    PEFT_NOTES_DATA=../shared/data .venv/bin/python bench/s4_search.py --out results/s4_sst2.json   # ~20 min on 2 cores

Each model the search scores (`peft_notes.methods.hybrid.search.s4_search`) is an `S4Config` trained with the harness's
loop on a slice of SST-2's *training* sentences and scored on another slice of them — the low-fidelity proxy the
AutoPEFT bench uses, shorter — so that SST-2's dev set is left for the table. Stage one scores `--k` random-strategy
models per grouping pattern; stage two tries `--candidates` strategy sets per group (all 15 with none given). The
new 2-way head trains in full in every model, and each design is trained once. The file is rewritten after every
model, so a stopped run keeps what it measured; at the end it prints the `peft-notes compare` command that trains
the design found at the table's budget.
"""
import argparse, json, time
from pathlib import Path

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="sst2"); ap.add_argument("--search-train", type=int, default=1000); ap.add_argument("--search-valid", type=int, default=1000)
    ap.add_argument("--epochs", type=float, default=2.0); ap.add_argument("--lr", type=float, default=3e-3); ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--k", type=int, default=1); ap.add_argument("--candidates", type=int, default=4); ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/s4_sst2.json")
    a = ap.parse_args(argv)
    from search_setup import search_data, train_design
    from peft_notes.train import provenance
    from peft_notes.methods.hybrid.search import s4_search
    data = search_data(a.task, a.search_train, a.search_valid, seed=a.seed, max_length=a.max_length)
    out = {"settings": vars(a), "provenance": provenance(methods=["s4", "harness"]), "models": []}

    def objective(cfg):
        row = {"grouping": cfg.grouping, "strategies": cfg.strategies, **train_design(cfg, data, epochs=a.epochs, lr=a.lr, seed=a.seed)}
        out["models"].append(row); Path(a.out).write_text(json.dumps(out, indent=1))
        print(f"{len(out['models'])}: {cfg.grouping} {cfg.strategies} acc {row['accuracy']:.3f} params {row['params']:,} {row['seconds']:.0f}s", flush=True)
        return row["accuracy"]

    r = s4_search(objective, n_layers=6, k=a.k, candidates=a.candidates, seed=a.seed, modules_to_save=["classifier"])
    out.update(grouping=r["grouping"], strategies=r["strategies"], pattern_means=r["pattern_means"], history=r["history"])
    out["train_command"] = (f"peft-notes compare --task {a.task} --train-size 8000 --epochs 2 --methods s4 --lr s4={a.lr:g} "
                            f"--set s4.grouping={r['grouping']} --set s4.strategies={','.join(r['strategies'])}")
    Path(a.out).write_text(json.dumps(out, indent=1))
    print("found", r["grouping"], r["strategies"], "\ntrain:", out["train_command"])

if __name__ == "__main__": main()
