"""Teach the stored digit generator (nbs/assets/digit_unet, digits 0-4) to follow a condition image with each control
method, and score it: how closely the samples' outlines follow the condition's (edge agreement), how often the
ten-digit judge reads the digit asked for, with the caption and without it, on digits 5-9 it never drew, the Frechet
distance to real digits, trained numbers, bytes, time; and each method's zero start against the paper's (or the
ordinary) initialisation, at step 0 and after training (~40 min on 2 cores).

    python bench/diffusion_control.py [--methods ...] [--seeds 0 1 2] [--steps 600] [--out results/diffusion_control.json]

Each run trains with the shared loop (AdamW, lr 1e-3, linear schedule, 5% warm-up) on batches of 64 of the base's 2,000
training digits 0-4, each with its condition (ControlNet, T2I-Adapter: its edge map; IP-Adapter: the stored ViT's
embedding of it), half the captions emptied (ControlNet's recipe). Scored on 20 test digits of each of 0-4 (with their
caption, and with the empty one) and of 5-9 ("a handwritten digit"), their conditions made the same way, seed 0,
guidance 3. Rows are written as they finish (a stopped run resumes); seed 0's samples go to <out>_samples.safetensors.
"""
import argparse, json, multiprocessing, tempfile, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
import torch

# run -> (registry name, config fields): the methods as the chapter registers them, and each one's other start
RUNS = {
    "base": (None, {}),
    "controlnet": ("controlnet", {}),
    "controlnet (ordinary init)": ("controlnet", {"zero_init": False}),
    "t2i_adapter": ("t2i_adapter", {}),
    "t2i_adapter (paper's init)": ("t2i_adapter", {"zero_init": False}),
    "ip_adapter": ("ip_adapter", {}),
    "ip_adapter (paper's init)": ("ip_adapter", {"zero_init": False}),
}

def eval_sets(digits, per:int)->dict:
    "name -> (images in [0, 1], digits, prompt kind): the first `per` test digits of each class."
    x, y = digits["test"]
    pick = lambda ds: torch.cat([torch.nonzero(y == d)[:per, 0] for d in ds])
    i04, i59 = pick(range(5)), pick(range(5, 10))
    return {"caption": (x[i04], y[i04]), "empty": (x[i04], y[i04]), "unseen": (x[i59], y[i59])}

def one(job):
    run, seed, a = job
    torch.set_num_threads(a.threads)
    from safetensors.torch import save_file
    from peft_notes.core import get_peft_model, list_methods
    from peft_notes.diffusion import caption, digit_split, load_digit_diffusion, read_digits, sample_digits, score_samples, to_model
    from peft_notes.methods.diffusion.control import control_loader, digit_image_embeds, edge_agreement, edge_map
    from peft_notes.train import fit
    from peft_notes.vision import load_digit_vit, mnist_images
    name, fields = RUNS[run]
    base, info = load_digit_diffusion(a.base)
    judge, _ = load_digit_vit(a.judge)
    encoder, _ = load_digit_vit(a.encoder)
    w = info["chapter_sample"]["guidance"]
    digits = digit_split(*mnist_images())
    x, y = (v[digits["train"][1] < 5] for v in digits["train"])
    ip = name == "ip_adapter"
    cond = (lambda imgs: {"image_embeds": digit_image_embeds(encoder, imgs)}) if ip else (lambda imgs: {"control_image": edge_map(imgs)})
    prompts = {"caption": lambda ys: [caption(int(d)) for d in ys], "empty": lambda ys: [""] * len(ys), "unseen": lambda ys: ["a handwritten digit"] * len(ys)}
    sets, real = eval_sets(digits, a.per_digit), digits["test"][0][digits["test"][1] < 5]
    torch.manual_seed(seed)
    pm = base if name is None else get_peft_model(base, list_methods()[name](**fields))
    def score(tag):
        out, keep = {}, {}
        for k, (imgs, ys) in sets.items():
            t0 = time.perf_counter()
            s = sample_digits(pm, prompts[k](ys), seed=0, guidance=w, **({} if name is None else cond(imgs)))
            r = score_samples(judge, s, ys, real if k == "caption" else None)
            out[k] = {"accuracy": r["accuracy"], "edge_agreement": edge_agreement(s, edge_map(imgs)).mean().item(), "sample_seconds": round(time.perf_counter() - t0, 2)}
            if "frechet" in r: out[k]["frechet"] = r["frechet"]
            keep[f"{run}/{tag}/{k}"] = (s[::a.per_digit // 2] * 255).round().to(torch.uint8)   # two of each digit
        return out, keep
    row = {"run": run, "registry": name, "config": fields, "seed": seed, "guidance": w}
    if name is not None:
        row["trainable"] = pm.trainable_report().trainable
        row["at_init"], keep0 = score("init")                          # before training: the base's, when the start is zero
        loader = control_loader(pm, to_model(x), [caption(int(d)) for d in y], cond(x), batch_size=64, drop=0.5, seed=seed)
        t0 = time.perf_counter()
        h = fit(pm, loader, epochs=a.steps / len(loader), lr=a.lr, weight_decay=0.0, warmup=0.05, seed=seed, progress=False)
        row.update(steps=len(h.losses), lr=a.lr, train_seconds=round(time.perf_counter() - t0, 1),
                   step_seconds=round(sorted(h.step_times)[len(h.step_times) // 2], 4),
                   loss_curve=[round(sum(c) / len(c), 5) for c in (h.losses[i:i + 20] for i in range(0, len(h.losses), 20))])
        with tempfile.TemporaryDirectory() as d:
            pm.save_adapter(d); row["adapter_bytes"] = sum(f.stat().st_size for f in Path(d).iterdir())
        pm.eval()
    else: keep0 = {}
    row["trained"], keep = score("trained" if name else "base")
    return row, ({**keep0, **keep} if seed == 0 else None)

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--ablation-seeds", type=int, nargs="+", default=[0], help="seeds of the other-initialisation runs")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--per-digit", type=int, default=20, help="test digits of each class scored per set")
    ap.add_argument("--base", default="nbs/assets/digit_unet")
    ap.add_argument("--judge", default="nbs/assets/digit_scorer")
    ap.add_argument("--encoder", default="nbs/assets/digit_vit", help="IP-Adapter's frozen image encoder: the vision chapter's ViT")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/diffusion_control.json")
    a = ap.parse_args()
    from peft_notes.harness import provenance
    from safetensors.torch import load_file, save_file
    out = Path(a.out); samples_path = out.with_name(out.stem + "_samples.safetensors")
    store = json.loads(out.read_text()) if out.exists() else {"rows": []}
    done = {(r["run"], r["seed"]) for r in store["rows"]}
    store.update(protocol={k: v for k, v in vars(a).items() if k not in ("out", "methods", "seeds", "ablation_seeds", "workers", "threads")},
                 provenance=provenance(methods=sorted({RUNS[m][0] for m in a.methods if RUNS[m][0]})))
    saved = load_file(samples_path) if samples_path.exists() else {}
    seeds_of = lambda m: a.seeds[:1] if m == "base" else (a.ablation_seeds if "(" in m else a.seeds)   # the base: one row (nothing trains)
    jobs = sorted([(m, s, a) for m in a.methods for s in seeds_of(m) if (m, s) not in done], key=lambda j: (j[1], list(RUNS).index(j[0])))
    with ProcessPoolExecutor(a.workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        for row, samples in ex.map(one, jobs):
            store["rows"].append({**row, "commit": store["provenance"]["commit"]})
            if samples: saved.update(samples)
            tmp = out.with_suffix(".tmp"); tmp.write_text(json.dumps(store, indent=1)); tmp.replace(out)
            if saved: save_file(saved, str(samples_path))
            t = row["trained"]
            print(f"{row['run']} seed {row['seed']}: edges {t['caption']['edge_agreement']:.2f}, asked {t['caption']['accuracy']:.2f}, "
                  f"no caption {t['empty']['accuracy']:.2f}, 5-9 {t['unseen']['accuracy']:.2f}, {row.get('train_seconds', 0):.0f} s", flush=True)
