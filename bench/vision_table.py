"""The vision table of chapter *PEFT for vision, side by side*: every vision method (and LoRA, SSF, the head alone and
full fine-tuning) adapting the stored ViT (pretrained on MNIST's digits 0-4) to digits it never saw (5-9: 1, 5 and 20
images a class, and all 400) and to scikit-learn's 8x8 digits (20 a class, and all ~130), with seeds.

    python bench/vision_table.py --out results/vision_digits.json          # ~20 min on 2 cores (two worker processes)

Each method's learning rate is chosen first, once, on a validation split (50 images a class of 5-9 that no draw uses)
after training on one 20-shot draw (seed 100), from a grid of three; then every (task, method, seed) trains with it:
few-shot tasks for `--steps` steps (batches of 25), the full ones for `--epochs` epochs (batches of 50), AdamW with the
shared loop's schedule (`peft_notes.train.fit`), a fresh head each time. A row records the test accuracy, the trained
numbers, the adapter file's bytes and the mean step time (batches of 25, this process, one thread)."""
import argparse, json, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

LRS = {"head": [3e-3, 1e-2, 3e-2], "full": [1e-4, 3e-4, 1e-3]}   # the rest: [3e-3, 1e-2, 3e-2] (prompts: up to 1e-1)
METHODS = {   # name -> (registry method or baseline, config fields)
    "head": ("head", {}), "full": ("full", {}),
    "lora": ("lora", {"r": 8}),                                   # PEFT's image-classification guide: the query and value projections
    "vpt": ("vpt", {"num_virtual_tokens": 10}), "vpt_deep": ("vpt_deep", {"num_virtual_tokens": 10}),
    "adaptformer": ("adaptformer", {"bottleneck": 16}), "convpass": ("convpass", {"hidden": 8}),
    "fact_tt": ("fact", {"r": 16, "fact_format": "tt"}), "fact_tk": ("fact", {"r": 16, "fact_format": "tk"}),
    "ssf": ("ssf", {}),
}
PROMPT_LRS = [1e-2, 3e-2, 1e-1]
TASKS = {"5-9, 1 shot": ("5-9", 1), "5-9, 5 shots": ("5-9", 5), "5-9, 20 shots": ("5-9", 20), "5-9, all": ("5-9", None),
         "8x8, 20 shots": ("8x8", 20), "8x8, all": ("8x8", None)}

def _grid(name): return LRS.get(name, PROMPT_LRS if name.startswith("vpt") else [3e-3, 1e-2, 3e-2])

def _data():
    "The two task families: {'5-9': (train pool, validation, test), '8x8': (train pool, None, test)}."
    import torch
    from peft_notes.vision import mnist_images, sklearn_digit_images, split_classes
    t59 = split_classes(*mnist_images(), range(5, 10))
    x, y = t59["train"]
    g = torch.Generator().manual_seed(123); val_idx = torch.cat([(y == c).nonzero().flatten()[torch.randperm(400, generator=g)[:50]] for c in range(5)])
    keep = torch.ones(len(y), dtype=torch.bool); keep[val_idx] = False
    uci = split_classes(*sklearn_digit_images(), range(10), test_per_class=50)
    return {"5-9": ((x[keep], y[keep]), (x[val_idx], y[val_idx]), t59["test"]), "8x8": (uci["train"], None, uci["test"])}

def _model(method, fields, k, seed=0):
    from peft_notes.core import get_peft_model, list_methods
    from peft_notes.vision import load_digit_vit
    m = load_digit_vit(ROOT / "nbs" / "assets" / "digit_vit", num_labels=k, seed=seed)[0]
    if method in ("head", "full"):
        for n, p in m.named_parameters(): p.requires_grad_(method == "full" or n.startswith("classifier"))
        return m
    return get_peft_model(m, list_methods()[method](**fields, modules_to_save=["classifier"]))

def run_one(job:dict)->dict:
    "Train one (method, task, seed, lr) and score it."
    import torch
    torch.set_num_threads(1)
    from peft_notes.train import evaluate, fit
    from peft_notes.vision import few_shot, image_loader
    name, family, shots, seed, lr = job["method"], job["family"], job["shots"], job["seed"], job["lr"]
    method, fields = METHODS[name]
    pool, val, test = DATA[family]
    train = pool if shots is None else few_shot(*pool, shots, seed=seed)
    k = int(test[1].max()) + 1
    model = _model(method, fields, k, seed)
    bs = 25 if shots is not None else 50
    loader = image_loader(*train, batch_size=bs, shuffle=True)
    epochs = job["steps"] / len(loader) if shots is not None else job["epochs"]
    h = fit(model, loader, epochs=epochs, lr=lr, seed=seed, progress=False)
    scored = val if job.get("on") == "val" else test
    acc = evaluate(model, image_loader(*scored, batch_size=250))
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    from peft_notes.harness import stored_bytes   # the adapter's two files; the head's or the whole model's trained tensors for the baselines
    return {**job, "accuracy": acc, "trained": trained, "bytes": stored_bytes(model), "steps_run": len(h.losses),
            "step_seconds": sum(h.step_times[3:]) / max(1, len(h.step_times[3:])), "final_loss": h.losses[-1]}

def _init(root):
    global DATA, ROOT
    ROOT = Path(root); DATA = _data()

ROOT, DATA = Path(__file__).resolve().parents[1], None

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/vision_digits.json")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=120, help="training steps of a few-shot run (batches of 25)")
    ap.add_argument("--epochs", type=float, default=6, help="epochs of a full-data run (batches of 50)")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    if (bad := sorted(set(a.methods) - set(METHODS))): sys.exit(f"unknown methods {bad}; choose from {list(METHODS)}")
    if (bad := sorted(set(a.tasks) - set(TASKS))): sys.exit(f"unknown tasks {bad}; choose from {list(TASKS)}")
    t0 = time.time()
    with ProcessPoolExecutor(a.workers, initializer=_init, initargs=(str(ROOT),)) as pool:
        grid = [{"method": m, "family": "5-9", "shots": 20, "seed": 100, "lr": lr, "steps": a.steps, "epochs": a.epochs, "on": "val"}
                for m in a.methods for lr in _grid(m)]
        chosen_rows = list(pool.map(run_one, grid))
        lr_of = {m: max((r for r in chosen_rows if r["method"] == m), key=lambda r: (r["accuracy"], -r["lr"]))["lr"] for m in a.methods}
        print("learning rates chosen on validation:", lr_of, flush=True)
        jobs = [{"method": m, "task": t, "family": TASKS[t][0], "shots": TASKS[t][1], "seed": s, "lr": lr_of[m], "steps": a.steps, "epochs": a.epochs}
                for t in a.tasks for m in a.methods for s in range(a.seeds)]
        jobs.sort(key=lambda j: j["shots"] is not None)            # the long full-data runs first: the two workers end together
        rows = list(pool.map(run_one, jobs))
    from peft_notes.harness import provenance
    fp = sorted({METHODS[m][0] for m in a.methods} | {"harness"})
    out = {"what": __doc__.splitlines()[0], "lr_selection": chosen_rows, "learning_rates": lr_of, "rows": rows,
           "seconds": round(time.time() - t0, 1), "provenance": provenance(methods=fp)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True); Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"{len(rows)} runs in {out['seconds']:.0f} s -> {a.out}")
