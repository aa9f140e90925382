"""Teach the stored digit generator (nbs/assets/digit_unet, digits 0-4) the digit five from a few images with each
few-shot method, and score it: how often the ten-digit judge reads a five when asked for one, how often it still
reads 0-4 when asked for them (forgetting), the Frechet distance of the fives to real ones, trained numbers, bytes,
time (~25 min on 2 cores).

    python bench/diffusion_few_shot.py [--methods ...] [--seeds 0 1 2] [--steps 400] [--shots 8] [--out results/diffusion_few_shot.json]

Each run trains with the shared loop (AdamW, linear schedule, 5% warm-up) on batches of 8 of the five's images and,
with prior preservation, 8 of the base's own samples of 0-4 (40 drawn once, 8 a digit, seed 1) weighted 1. Rows are
written as they finish (a stopped run resumes); seed 0's samples go to <out>_samples.safetensors.
"""
import argparse, json, multiprocessing, tempfile, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
import torch

# method -> (registry name, config fields, learning rate, prompt's word for five, trains a word?, prior preservation?)
RUNS = {
    "base": (None, {}, 0.0, "five", False, False),                       # no adapter, no training: where every method starts
    "textual_inversion": ("textual_inversion", {"placeholder_token": "<five>"}, 5e-3, "<five>", True, False),
    "dreambooth": ("dreambooth", {}, 1e-4, "five", False, True),
    "dreambooth (no prior)": ("dreambooth", {"prior_loss_weight": 0.0}, 1e-4, "five", False, False),
    "dreambooth-lora": ("dreambooth", {"r": 4, "alpha": 4}, 3e-3, "five", False, True),
    "lora (no prior)": ("lora", {"r": 4, "alpha": 4}, 3e-3, "five", False, False),
    "custom_diffusion": ("custom_diffusion", {"modifier_token": "<five>"}, 3e-3, "<five>", True, True),
    "svdiff": ("svdiff", {}, 1e-2, "five", False, True),
}

def one(job):
    method, seed, a = job
    torch.set_num_threads(a.threads)
    from peft_notes.core import get_peft_model, list_methods
    from peft_notes.diffusion import caption, digit_split, load_digit_diffusion, read_digits, sample_digits, score_samples, to_model
    from peft_notes.methods.diffusion.few_shot import few_shot_loader
    from peft_notes.train import fit
    from peft_notes.vision import load_digit_vit, mnist_images
    name, fields, lr, word, trains_word, prior = RUNS[method]
    lr = a.lr.get(method, lr)
    base, info = load_digit_diffusion(a.base)
    judge, _ = load_digit_vit(a.judge)
    w = info["chapter_sample"]["guidance"]
    digits = digit_split(*mnist_images())
    pool = digits["train"][0][digits["train"][1] == 5]
    shots = to_model(pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:a.shots]])
    cls_prompts = [caption(d) for d in range(5) for _ in range(8)]
    cls_imgs = to_model(sample_digits(base, cls_prompts, seed=1, guidance=w)) if prior else None
    torch.manual_seed(seed)
    prompt = f"a handwritten digit {word}"
    if name is None:                                                   # the base as it is
        pm, seconds, nbytes = base, 0.0, 0
        h = type("H", (), {"losses": [float("nan")] * 40, "step_times": [0.0]})()
    else:
        pm = get_peft_model(base, list_methods()[name](**fields))
        loader = few_shot_loader(pm, shots, prompt, cls_imgs, cls_prompts if prior else None, batch_size=8, steps=a.steps, seed=seed, encode=not trains_word)
        t0 = time.perf_counter()
        h = fit(pm, loader, epochs=1, lr=lr, warmup=0.05, seed=seed, progress=False)
        seconds = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as d:
            pm.save_adapter(d); nbytes = sum(f.stat().st_size for f in Path(d).iterdir())
    pm.eval()
    fives = sample_digits(pm, [prompt] * a.samples, seed=0, guidance=w)
    real5 = digits["test"][0][digits["test"][1] == 5]
    s5 = score_samples(judge, fives, torch.full((a.samples,), 5), real5)
    asked = torch.arange(5).repeat_interleave(a.samples // 5)
    old = sample_digits(pm, [caption(int(d)) for d in asked], seed=0, guidance=w)
    s04 = score_samples(judge, old, asked)
    row = {"method": method, "registry": name, "config": fields, "seed": seed, "lr": lr, "steps": len(h.losses), "shots": a.shots, "prior": prior,
           "prompt": prompt, "trainable": pm.trainable_report().trainable if name else 0, "adapter_bytes": nbytes, "train_seconds": round(seconds, 1),
           "step_seconds": round(sorted(h.step_times)[len(h.step_times) // 2], 4), "final_loss": round(sum(h.losses[-40:]) / 40, 5) if name else None,
           "five_accuracy": s5["accuracy"], "five_frechet": s5["frechet"], "old_accuracy": s04["accuracy"], "old_per_digit": s04["per_digit"]}
    samples = {"fives": (fives[:20] * 255).round().to(torch.uint8), "old": (old[::a.samples // 25][:20] * 255).round().to(torch.uint8)} if seed == 0 else None
    return row, samples

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--shots", type=int, default=8)
    ap.add_argument("--samples", type=int, default=100, help="samples of the five, and of 0-4 together, scored per run")
    ap.add_argument("--lr", type=json.loads, default={}, help='JSON {method: rate} overriding the table\'s rates')
    ap.add_argument("--base", default="nbs/assets/digit_unet")
    ap.add_argument("--judge", default="nbs/assets/digit_scorer")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/diffusion_few_shot.json")
    a = ap.parse_args()
    from peft_notes.harness import provenance
    from safetensors.torch import load_file, save_file
    out = Path(a.out); samples_path = out.with_name(out.stem + "_samples.safetensors")
    store = json.loads(out.read_text()) if out.exists() else {"rows": []}
    done = {(r["method"], r["seed"]) for r in store["rows"]}
    store.update(protocol={k: v for k, v in vars(a).items() if k not in ("out", "methods", "seeds", "workers", "threads")},
                 provenance=provenance(methods=sorted({RUNS[m][0] for m in a.methods if RUNS[m][0]})))
    saved = load_file(samples_path) if samples_path.exists() else {}
    jobs = [(m, s, a) for s in a.seeds for m in a.methods if (m, s) not in done and (m != "base" or s == a.seeds[0])]   # the base: one row (nothing random trains)
    with ProcessPoolExecutor(a.workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        for row, samples in ex.map(one, jobs):
            store["rows"].append(row)
            if samples: saved.update({f"{row['method']}/{k}": v for k, v in samples.items()})
            tmp = out.with_suffix(".tmp"); tmp.write_text(json.dumps(store, indent=1)); tmp.replace(out)
            if saved: save_file(saved, str(samples_path))
            print(f"{row['method']} seed {row['seed']}: five {row['five_accuracy']:.2f}, 0-4 {row['old_accuracy']:.2f}, {row['trainable']:,} trained, {row['train_seconds']:.0f} s", flush=True)
