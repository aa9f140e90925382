"""The vision-language chapters' stored results: few-shot curves of every CLIP method, and CoCoOp's base-to-new test,
on the stored two towers (nbs/assets/digit_clip: trained on the captions of digits 0-4).

    python bench/clip_fewshot.py --out results/clip_fewshot.json          # ~15 min on 2 cores (two worker processes)

Curves: 1, 5 and 20 images a class of the digits 5-9 (the towers name them at 0.166 zero-shot), three draws each;
zero-shot (three templates), a linear probe of the image tower's features (chapter 70's), CoOp (M = 4), CoCoOp (M = 4),
CLIP-Adapter (alpha = 0.2), Tip-Adapter (training-free) and Tip-Adapter-F; scored on the 500 test images of 5-9.
Base to new: 16 images a class of 5-9 (the base classes) train CoOp, CoCoOp and CLIP-Adapter; each is then scored on
5-9 and, the class names switched, on the 500 test images of 0-4 (the new classes: named at 0.980 zero-shot); H is the
harmonic mean. Every trained run: `--steps` steps of batches of up to 25 (AdamW at `--lr`, the shared loop's schedule),
the caption template "{}" for the prompt methods (their context replaces the template) and the three templates for
the others, as chapter 76. A row records the accuracies, the trained numbers and the mean step time (one thread)."""
import argparse, json, sys, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = {   # name -> (registry method or baseline, config fields, caption templates: None = the three)
    "zero_shot": ("zero_shot", {}, None), "linear_probe": ("linear_probe", {}, None),
    "coop": ("coop", {"n_ctx": 4}, ["{}"]), "cocoop": ("cocoop", {"n_ctx": 4}, ["{}"]),
    "clip_adapter": ("clip_adapter", {"ratio": 0.2}, None),
    "tip_adapter": ("tip_adapter", {}, None), "tip_adapter_f": ("tip_adapter", {"train_keys": True}, None),
}
BASE_TO_NEW = ["zero_shot", "coop", "cocoop", "clip_adapter"]   # the methods that can score classes they were not trained on
DATA = None

def _init():
    global DATA
    from peft_notes.vision import mnist_images, split_classes
    x, y = mnist_images()
    DATA = {"base": split_classes(x, y, range(5, 10)), "new": split_classes(x, y, range(5))}

def run_one(job:dict)->dict:
    "One (method, shots, seed) run: its accuracy on 5-9 and, for the base-to-new jobs, on 0-4 with their names."
    import torch
    torch.set_num_threads(1)
    from peft_notes.core import get_peft_model, list_methods
    from peft_notes.multimodal import DIGIT_NAMES, load_digit_clip
    from peft_notes.train import evaluate, fit
    from peft_notes.vision import few_shot, image_features, image_loader, linear_probe, load_digit_vit
    name, shots, seed = job["method"], job["shots"], job["seed"]
    method, fields, templates = METHODS[name]
    base, new = DATA["base"], DATA["new"]
    train = few_shot(*base["train"], shots, seed=seed)
    row = {**job, "trained": 0, "step_seconds": None}
    if name == "linear_probe":
        vit = load_digit_vit(ROOT / "nbs" / "assets" / "digit_vit")[0]
        row["base"] = linear_probe(image_features(vit, train[0]), train[1], image_features(vit, base["test"][0]), base["test"][1])
        row["trained"] = 64 * 5 + 5
        return row
    clip, tok, _ = load_digit_clip(ROOT / "nbs" / "assets" / "digit_clip")
    tmpl = {"templates": templates} if templates else {}
    clip.set_classes(DIGIT_NAMES[5:], tok, **tmpl)
    model = clip
    if method != "zero_shot":
        torch.manual_seed(seed)
        model = get_peft_model(clip, list_methods()[method](**fields))
        loader = image_loader(*train, batch_size=min(25, len(train[1])), shuffle=True)
        model.before_training(loader)                                   # Tip-Adapter's cache (the others: nothing)
        row["trained"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if row["trained"]:
            h = fit(model, loader, epochs=job["steps"] / len(loader), lr=job["lr"], seed=seed, progress=False)
            row["step_seconds"] = sum(h.step_times[3:]) / max(1, len(h.step_times[3:]))
            row["final_loss"] = h.losses[-1]
    model.eval()
    row["base"] = evaluate(model, image_loader(*base["test"], batch_size=250))
    if job["to_new"]:
        clip.set_classes(DIGIT_NAMES[:5], tok, **tmpl)
        row["new"] = evaluate(model, image_loader(*new["test"], batch_size=250))
        row["H"] = 2 * row["base"] * row["new"] / (row["base"] + row["new"]) if row["base"] + row["new"] else 0.0
    return row

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/clip_fewshot.json")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--shots", nargs="+", type=int, default=[1, 5, 20])
    ap.add_argument("--base-to-new-shots", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=120, help="training steps of a run (batches of up to 25)")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    if (bad := sorted(set(a.methods) - set(METHODS))): sys.exit(f"unknown methods {bad}; choose from {list(METHODS)}")
    common = {"steps": a.steps, "lr": a.lr}
    jobs = [{"kind": "curve", "method": m, "shots": s, "seed": k, "to_new": False, **common} for s in a.shots for m in a.methods for k in range(a.seeds)]
    jobs += [{"kind": "base_to_new", "method": m, "shots": a.base_to_new_shots, "seed": k, "to_new": True, **common}
             for m in BASE_TO_NEW if m in a.methods for k in range(a.seeds)]
    jobs.sort(key=lambda j: j["method"] != "cocoop")                   # the slow ones first: the two workers end together
    t0 = time.time()
    with ProcessPoolExecutor(a.workers, initializer=_init) as pool: rows = list(pool.map(run_one, jobs))
    from peft_notes.harness import provenance
    fp = sorted({METHODS[m][0] for m in a.methods} - {"zero_shot", "linear_probe"} | {"harness"})
    out = {"what": __doc__.splitlines()[0], "rows": rows, "seconds": round(time.time() - t0, 1), "provenance": provenance(methods=fp)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True); Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"{len(rows)} runs in {out['seconds']:.0f} s -> {a.out}")
