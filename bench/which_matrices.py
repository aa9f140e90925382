"""Which weight matrices to adapt under a fixed budget: the LoRA paper's Table 5 study, on MiniLM and SST-2.

    .venv/bin/python bench/which_matrices.py --out results/which_matrices_sst2.json    # ~10 min a seed on 2 cores

Hu et al. (ICLR 2022, Table 5) fix the number of trainable LoRA parameters and spend it on one attention
matrix at rank 8, on two at rank 4, or on all four at rank 2. Here the same seven choices on the shipped
MiniLM (6 layers, width 384: every choice trains 6 x 8 x (384 + 384) = 36,864 LoRA parameters, plus the
2-way head), SST-2 through the book's harness (`run_method`), one run per seed; SST-2's validation split
is the test set. The per-choice mean and standard deviation are what the LoRA chapter reads.
"""
import argparse, json, statistics
from pathlib import Path
from peft_notes.train import load_task, provenance, run_method

MINILM = {"q": "query", "k": "key", "v": "value", "o": "attention.output.dense"}
CHOICES = [("q",), ("k",), ("v",), ("o",), ("q", "k"), ("q", "v"), ("q", "k", "v", "o")]

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/which_matrices_sst2.json")
    ap.add_argument("--train-size", type=int, default=4000)
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--resume", help="a log of an interrupted run: its printed rows (one JSON object per line) are kept, not re-run")
    a = ap.parse_args(argv)
    done = [json.loads(l) for l in Path(a.resume).read_text().splitlines() if l.startswith('{"matrices"')] if a.resume else []
    rows = []
    for seed in a.seeds:
        data = load_task("sst2", a.train_size, seed)
        for choice in CHOICES:
            r = 8 // len(choice) if len(choice) < 4 else 2
            name = "".join(f"W{m}," for m in choice).rstrip(",")
            old = next((d for d in done if d["matrices"] == name and d["seed"] == seed), None)
            if old is not None: rows.append(old); continue
            row = run_method("lora", "sst2", a.train_size, a.epochs, seed=seed, progress=False, data=data,
                             config={"r": r, "alpha": 2 * r, "target_modules": [MINILM[m] for m in choice]})
            lora = row["trainable"] - (384 * 2 + 2)           # the head (weight + bias) trains in full in every row
            assert lora == 6 * r * len(choice) * (384 + 384), lora
            rows.append({"matrices": name, "r": r, "lora_params": lora, "seed": seed,
                         "acc": row["acc_after"], "train_s": row["train_s"]})
            print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for m in dict.fromkeys(r["matrices"] for r in rows):
        accs = [r["acc"] for r in rows if r["matrices"] == m]
        summary[m] = {"r": next(r["r"] for r in rows if r["matrices"] == m), "lora_params": next(r["lora_params"] for r in rows if r["matrices"] == m),
                      "mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "n": len(accs)}
    out = {"task": "sst2", "train_size": a.train_size, "epochs": a.epochs, "seeds": a.seeds, "rows": rows, "summary": summary, "provenance": provenance(methods=["lora", "harness"])}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    for m, s in summary.items(): print(f"{m:14s} r={s['r']}  {s['mean']:.4f} ± {s['std']:.4f}")

if __name__ == "__main__":
    main()
