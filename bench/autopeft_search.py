"""AutoPEFT's search on the shipped MiniLM: multi-objective Bayesian optimisation of accuracy against trainable parameters.

    PEFT_NOTES_DATA=../shared/data .venv/bin/python bench/autopeft_search.py --out results/autopeft_sst2.json   # ~25 s a trial on 2 cores

Each trial draws a configuration from AutoPEFT's space (`peft_notes.methods.hybrid.search.autopeft_search`: which of
MiniLM's 6 blocks get adapters, a serial adapter's and a parallel adapter's size, a prefix's length), trains it
with the harness's loop on a small slice of SST-2's *training* sentences (the low-fidelity proxy the paper also
uses: a short run on less data), and scores it on another slice of the training sentences — SST-2's dev set is
left for the family's table. The new 2-way head trains in full in every trial and is not counted in the
parameters. The file is rewritten after every trial, so a stopped run keeps what it measured.
"""
import argparse, json, time
from dataclasses import replace
from pathlib import Path

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="sst2"); ap.add_argument("--search-train", type=int, default=1000); ap.add_argument("--search-valid", type=int, default=1000)
    ap.add_argument("--epochs", type=float, default=1.0); ap.add_argument("--lr", type=float, default=3e-3); ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--trials", type=int, default=30); ap.add_argument("--startup", type=int, default=10); ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/autopeft_sst2.json")
    a = ap.parse_args(argv)
    from search_setup import search_data, train_design
    from peft_notes.train import provenance
    from peft_notes.methods.hybrid.search import autopeft_search, pareto_front
    data = search_data(a.task, a.search_train, a.search_valid, seed=a.seed, max_length=a.max_length)
    out = {"settings": vars(a), "provenance": provenance(methods=["autopeft", "harness"]), "trials": []}

    def objective(cfg):
        row = {"config": cfg.to_dict(), **train_design(replace(cfg, modules_to_save=["classifier"]), data, epochs=a.epochs, lr=a.lr, seed=a.seed)}
        out["trials"].append(row); Path(a.out).write_text(json.dumps(out, indent=1))
        print(f"trial {len(out['trials'])}: acc {row['accuracy']:.3f} params {row['params']:,} {row['seconds']:.0f}s", flush=True)
        return row["accuracy"], row["params"]

    study = autopeft_search(objective, n_layers=6, n_trials=a.trials, seed=a.seed, n_startup_trials=a.startup)
    out["pruned"] = sum(t.state.name == "PRUNED" for t in study.trials)
    out["front"] = pareto_front(study)
    Path(a.out).write_text(json.dumps(out, indent=1))

if __name__ == "__main__": main()
