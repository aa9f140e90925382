"""NOAH on the stored ViT: train the supernet once, search its sub-networks by evolution within LoRA's parameter count,
then run the design found through the vision table's protocol (bench/vision_table.py), as one more row of that table.

    python bench/noah_vit.py --out results/noah_vit.json          # ~10 min on 2 cores (two worker processes)

The supernet (`NOAHSupernetConfig`: in each of the ViT's 6 layers a serial adapter, LoRA on q_proj and v_proj and
visual prompt tokens, each at its largest choice; a fresh 5-way head) trains on the training pool of digits 5-9 (the
vision table's, without its validation images), a random sub-network each step. The evolution (`noah_search`) scores
sub-networks of at most `--limit` trainable parameters (the head not counted; the default is LoRA r = 8's count in the
table) by the supernet's accuracy on the vision table's validation split with that sub-network switched on. The design
found is then the table's method "noah": its learning rate chosen on the same validation split from the same grid, then
every task and seed of the table trained from scratch (the paper's retraining), with `vision_table.run_one`."""
import argparse, json, multiprocessing, sys, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vision_table as vt

def _init(root, fields):
    vt._init(root)
    vt.METHODS["noah"] = ("noah", fields)

def search(a)->dict:
    "Train the supernet and search it; returns the record (settings, supernet, history, best)."
    import torch
    torch.set_num_threads(a.threads)
    from peft_notes.core import get_peft_model
    from peft_notes.methods.hybrid.noah import NOAHSupernetConfig, noah_params, noah_search, set_subnet
    from peft_notes.train import evaluate, fit
    from peft_notes.vision import image_loader, load_digit_vit
    pool, val, _ = vt._data()["5-9"]
    model = load_digit_vit(vt.ROOT / "nbs" / "assets" / "digit_vit", num_labels=5, seed=a.seed)[0]
    ch = {k: [int(x) for x in getattr(a, f"{k}_choices").split(",")] for k in ("adapter", "lora", "prompt")}
    cfg = NOAHSupernetConfig(adapter_choices=ch["adapter"], lora_choices=ch["lora"], prompt_choices=ch["prompt"], seed=a.seed, modules_to_save=["classifier"])
    torch.manual_seed(a.seed); sup = get_peft_model(model, cfg)
    rec = {"supernet": {"config": cfg.to_dict(), "trainable": sup.trainable_report().trainable}}
    t0 = time.perf_counter()
    h = fit(sup, image_loader(*pool, batch_size=50, shuffle=True), epochs=a.epochs, lr=a.lr, seed=a.seed, progress=False)
    rec["supernet"].update(seconds=round(time.perf_counter() - t0, 1), steps=len(h.losses), losses=h.losses[::10])
    sup.eval(); loader = image_loader(*val, batch_size=250)
    count = lambda s: noah_params(64, s["adapter"], s["lora"], s["prompt"], kv_width=64)   # a visual prompt token: d numbers
    set_subnet(sup, None); rec["largest"] = {"params": count({k: [max(c)] * 6 for k, c in ch.items()}), "accuracy": evaluate(sup, loader)}
    def score(s):
        set_subnet(sup, s); return evaluate(sup, loader)
    t0 = time.perf_counter()
    r = noah_search(score, n_layers=6, choices=cfg.choices(), params=count, limit=a.limit, population=a.population,
                    generations=a.generations, parents=a.parents, seed=a.seed)
    rec.update(search_seconds=round(time.perf_counter() - t0, 1), history=r["history"], best=r["best"], best_params=r["params"], best_supernet_accuracy=r["score"])
    print(f"supernet {rec['supernet']['steps']} steps in {rec['supernet']['seconds']:.0f} s; found {r['best']} ({r['params']:,} params, "
          f"supernet accuracy {r['score']:.3f}) in {rec['search_seconds']:.0f} s", flush=True)
    return rec

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/noah_vit.json")
    ap.add_argument("--adapter-choices", default="0,4,8,16"); ap.add_argument("--lora-choices", default="0,2,4,8"); ap.add_argument("--prompt-choices", default="0,5,10")
    ap.add_argument("--limit", type=int, default=12_288, help="the most trainable parameters a sub-network may have (the head not counted): LoRA r = 8 on q and v of 6 layers")
    ap.add_argument("--epochs", type=float, default=6, help="the supernet's epochs over the 5-9 pool (batches of 50)")
    ap.add_argument("--lr", type=float, default=1e-2, help="the supernet's learning rate")
    ap.add_argument("--population", type=int, default=10); ap.add_argument("--generations", type=int, default=5); ap.add_argument("--parents", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0); ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tasks", nargs="+", default=list(vt.TASKS)); ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=120); ap.add_argument("--table-epochs", type=float, default=6); ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    if (bad := sorted(set(a.tasks) - set(vt.TASKS))): sys.exit(f"unknown tasks {bad}; choose from {list(vt.TASKS)}")
    t0 = time.time()
    rec = search(a)
    fields = {"adapter_sizes": rec["best"]["adapter"], "lora_ranks": rec["best"]["lora"], "prompt_lengths": rec["best"]["prompt"]}
    spawn = multiprocessing.get_context("spawn")                      # not fork: this process has run torch's threads (a forked child can hang in them)
    with ProcessPoolExecutor(a.workers, mp_context=spawn, initializer=_init, initargs=(str(vt.ROOT), fields)) as pool:
        grid = [{"method": "noah", "family": "5-9", "shots": 20, "seed": 100, "lr": lr, "steps": a.steps, "epochs": a.table_epochs, "on": "val"} for lr in vt._grid("noah")]
        chosen_rows = list(pool.map(vt.run_one, grid))
        lr = max(chosen_rows, key=lambda r: (r["accuracy"], -r["lr"]))["lr"]
        jobs = [{"method": "noah", "task": t, "family": vt.TASKS[t][0], "shots": vt.TASKS[t][1], "seed": s, "lr": lr, "steps": a.steps, "epochs": a.table_epochs}
                for t in a.tasks for s in range(a.seeds)]
        jobs.sort(key=lambda j: j["shots"] is not None)
        rows = list(pool.map(vt.run_one, jobs))
    from peft_notes.harness import provenance
    out = {"what": __doc__.splitlines()[0], "settings": vars(a), **rec, "fields": fields, "lr_selection": chosen_rows, "learning_rate": lr, "rows": rows,
           "seconds": round(time.time() - t0, 1), "provenance": provenance(methods=["noah", "harness"])}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True); Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"lr {lr}; {len(rows)} runs; {out['seconds']:.0f} s in all -> {a.out}")
