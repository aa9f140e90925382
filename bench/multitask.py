"""The multi-task family's stored results (chapters *Merging adapters* and *AdapterFusion*), on the suite of chapter
*Multi-task PEFT: the tasks* with the shipped MiniLM. Every task's model has one classifier 6 wide (the suite's
largest label set); a task with n classes is scored on the first n logits.

    PEFT_NOTES_DATA=../shared/data python bench/multitask.py sources --save runs/multitask --out results/multitask_sources.json
    PEFT_NOTES_DATA=../shared/data python bench/multitask.py merging --save runs/multitask --out results/multitask_merging.json
    PEFT_NOTES_DATA=../shared/data python bench/multitask.py fusion --save runs/multitask --out results/multitask_fusion.json
    PEFT_NOTES_DATA=../shared/data python bench/multitask.py lorahub --save runs/multitask --out results/multitask_lorahub.json

`sources`: one LoRA (r = 8, α = 16, query and value) and one Pfeiffer adapter per source task, each with its own head,
trained alone on `--train-size` rows (4,000) for `--epochs` (3) with the harness's loop, saved under `--save`.
`merging`: the source LoRAs merged by every `how` of `merge_adapters`, each merged adapter scored on every source
task with that task's head: the interference matrix. `fusion`: AdapterFusion on a held-out target task at two training
sizes, against the target's own adapter and its head alone; the fusion's attention per layer on the target's test set. `lorahub`: the
source LoRAs as LoraHub's pool for the held-out target, from 20 of its rows, against zero-shot and a LoRA trained on
the same rows."""
import argparse, json, time
from pathlib import Path
import torch

SOURCES = ["sst2", "bbc_topic", "bbc_headline", "dialogue_topic", "shakespeare_speaker", "sst2_negated"]
TARGET = "bbc_sentence_topic"
WIDTH = 6   # the classifier's width: the suite's largest label set
LRS = {"lora": 3e-3, "pfeiffer": 1e-3, "head": 2e-2}   # the harness's LoRA and head rates; the additive family's table's rate for Pfeiffer
METHODS = {"lora": dict(r=8, alpha=16, target_modules=["query", "value"], modules_to_save=["classifier"]),
           "pfeiffer": dict(modules_to_save=["classifier"])}

def _data(task, train_size, seed=0, seq=64):
    from peft_notes.tasks import load_suite_task
    from peft_notes.data import tokenize
    from peft_notes.models import load_minilm
    ds = load_suite_task(task, train_size, seed)
    _, tok = load_minilm(num_labels=WIDTH)
    return tokenize(ds, tok, text_column="text", max_length=seq), tok, ds["train"].features["label"].num_classes

@torch.no_grad()
def score(pm, loader, n):
    "Accuracy on the first n logits."
    pm.eval(); right = total = 0
    for b in loader:
        y = b.pop("labels"); right += (pm(**b).logits[:, :n].argmax(-1) == y).sum().item(); total += len(y)
    return right / total

def _train(pm, enc, tok, method, epochs, seed=0):
    from peft_notes.train import fit, make_loader
    return fit(pm, make_loader(enc["train"], tok, 32, shuffle=True, seed=seed), epochs=epochs, lr=LRS[method], seed=seed, progress=False)

def sources(save, out, train_size, epochs, tasks=SOURCES, methods=("lora", "pfeiffer")):
    from peft_notes.core import get_peft_model, list_methods
    from peft_notes.harness import provenance
    from peft_notes.models import load_minilm
    from peft_notes.train import make_loader
    rows = []
    for task in tasks:
        enc, tok, n = _data(task, train_size)
        test = make_loader(enc["test"], tok, 128)
        for m in methods:
            t0 = time.time()
            pm = get_peft_model(load_minilm(num_labels=WIDTH, seed=0)[0], list_methods()[m](**METHODS[m]), task)
            h = _train(pm, enc, tok, m, epochs)
            acc = score(pm, test, n); pm.save_adapter(Path(save) / m / task, task)
            rows.append({"task": task, "method": m, "classes": n, "train_size": len(enc["train"]), "epochs": epochs, "lr": LRS[m],
                         "accuracy": acc, "losses": h.losses, "seconds": time.time() - t0})
            print(f"{task:22s} {m:9s} {acc:.4f}  ({time.time() - t0:.0f} s)", flush=True)
    r = {"sources": tasks, "width": WIDTH, "rows": rows, "provenance": provenance(methods=list(methods) + ["harness"])}
    if out: Path(out).write_text(json.dumps(r, indent=1))
    return r

MERGES = [("average", "linear", "1/N", {}), ("task_arithmetic", "task_arithmetic", 0.5, {}), ("svd", "svd", "1/N", {"rank": 8}),
          ("ties", "ties", 1.0, {"density": 0.2}), ("dare_linear", "dare_linear", "1/N", {"density": 0.2}),
          ("dare_ties", "dare_ties", 1.0, {"density": 0.2}), ("magnitude_prune", "magnitude_prune", "1/N", {"density": 0.2}),
          ("peft_linear", "linear", "1/N", {"semantics": "peft"})]

def merging(save, out, tasks=SOURCES, merges=MERGES):
    from peft_notes.core import PeftModel
    from peft_notes.harness import provenance
    from peft_notes.methods.multitask.merging import merge_adapters
    from peft_notes.models import load_minilm
    from peft_notes.train import make_loader
    pm = PeftModel.from_pretrained(load_minilm(num_labels=WIDTH, seed=0)[0], Path(save) / "lora" / tasks[0], tasks[0])
    for t in tasks[1:]: pm.load_adapter(Path(save) / "lora" / t, t)
    tests = {}
    for t in tasks:
        enc, tok, n = _data(t, None); tests[t] = (make_loader(enc["test"], tok, 128), n)
    own = {}
    for t in tasks: pm.set_adapter(t); own[t] = score(pm, *tests[t])
    table = {"own adapter": own}
    for label, how, w, kw in merges:
        weights = [1 / len(tasks)] * len(tasks) if w == "1/N" else [w] * len(tasks)
        t0 = time.time(); row = {}
        for t in tasks:   # one merged body, each task's own head
            merge_adapters(pm, tasks, weights, how, new_name="m", heads_from=t, **kw)
            pm.set_adapter("m"); row[t] = score(pm, *tests[t]); pm.set_adapter(tasks[0]); pm.delete_adapter("m")
        table[label] = row
        print(f"{label:16s} " + " ".join(f"{row[t]:.3f}" for t in tasks) + f"  ({time.time() - t0:.0f} s)", flush=True)
    r = {"tasks": tasks, "merges": [{"label": l, "how": h, "weights": w, **kw} for l, h, w, kw in merges], "accuracy": table,
         "provenance": provenance(methods=["lora", "harness"])}
    if out: Path(out).write_text(json.dumps(r, indent=1))
    return r

def fusion(save, out, target=TARGET, sizes=(100, 1676), tasks=SOURCES[:-1], lr_fusion=1e-3, steps=100):
    "AdapterFusion over the source Pfeiffer adapters and the target's own (the paper fuses the target's adapter too), at each training size."
    import tempfile
    from peft_notes.core import PeftModel, get_peft_model, list_methods
    from peft_notes.harness import provenance
    from peft_notes.methods.multitask.fusion import AdapterFusionConfig
    from peft_notes.models import load_minilm
    from peft_notes.train import fit, make_loader
    rows = []
    for size in sizes:
        enc, tok, n = _data(target, size)
        test, epochs = make_loader(enc["test"], tok, 128), max(2 * steps // 100, round(steps * 32 / size))   # about `steps` steps whatever the size
        train = lambda: make_loader(enc["train"], tok, 32, shuffle=True, seed=0)
        def record(kind, pm, h, t0, trainable, **extra):
            acc = score(pm, test, n)
            rows.append({"target": target, "train_size": len(enc["train"]), "kind": kind, "accuracy": acc, "trainable": trainable,
                         "epochs": epochs, "seconds": time.time() - t0, "losses": h.losses, **extra})
            print(f"{target} {len(enc['train']):5d} {kind:8s} {acc:.4f}  ({time.time() - t0:.0f} s)", flush=True)
        t0 = time.time(); head = load_minilm(num_labels=WIDTH, seed=0)[0]
        head.requires_grad_(False); head.classifier.requires_grad_(True)
        record("head", head, fit(head, train(), epochs=epochs, lr=LRS["head"], seed=0, progress=False), t0, sum(p.numel() for p in head.classifier.parameters()))
        t0 = time.time(); own = get_peft_model(load_minilm(num_labels=WIDTH, seed=0)[0], list_methods()["pfeiffer"](**METHODS["pfeiffer"]), target)
        record("adapter", own, fit(own, train(), epochs=epochs, lr=LRS["pfeiffer"], seed=0, progress=False), t0, own.trainable_report().trainable)
        with tempfile.TemporaryDirectory() as d:
            own.save_adapter(d, target)
            t0 = time.time(); pm = PeftModel.from_pretrained(load_minilm(num_labels=WIDTH, seed=0)[0], Path(save) / "pfeiffer" / tasks[0], tasks[0])
            for t in tasks[1:]: pm.load_adapter(Path(save) / "pfeiffer" / t, t)
            pm.load_adapter(d, target)
        fused = [*tasks, target]
        pm.add_adapter("fusion", AdapterFusionConfig(adapters=fused, modules_to_save=["classifier"])); pm.set_adapter("fusion")
        h = fit(pm, train(), epochs=epochs, lr=lr_fusion, seed=0, progress=False)
        atts = pm.adapter_shared["fusion"].layers
        for a in atts.values(): a.record = True
        sums, batches = {k: torch.zeros(len(fused)) for k in atts}, 0
        with torch.no_grad():
            for b in test:
                b = {k: v for k, v in b.items() if k != "labels"}; pm.eval()(**b); batches += 1
                for k, a in atts.items(): sums[k] += a.last_weights
        for a in atts.values(): a.record = False
        record("fusion", pm, h, t0, pm.trainable_report().trainable, lr=lr_fusion, fused=fused, attention={k: (v / batches).tolist() for k, v in sums.items()})
    r = {"rows": rows, "provenance": provenance(methods=["pfeiffer", "adapter_fusion", "harness"])}
    if out: Path(out).write_text(json.dumps(r, indent=1))
    return r

def lorahub(save, out, target=TARGET, pool=SOURCES, head="bbc_topic", shots=20, seeds=5, trials=40, tune_steps=30):
    """LoraHub on a task none of the pool was trained on: `seeds` draws of `shots` training rows; for each, the search
    (CMA-ES, `trials` trials, the composed LoRA taking `head`'s classifier, since the target shares its labels) against
    a LoRA trained on the same rows (fresh, and continued from `head`'s LoRA). Zero-shot rows: `head`'s LoRA as it is,
    and the pool's plain average."""
    from peft_notes.core import PeftModel, get_peft_model, list_methods
    from peft_notes.harness import provenance
    from peft_notes.methods.multitask.lorahub import lorahub_compose, lorahub_search
    from peft_notes.models import load_minilm
    from peft_notes.train import fit, make_loader
    def pool_model():
        pm = PeftModel.from_pretrained(load_minilm(num_labels=WIDTH, seed=0)[0], Path(save) / "lora" / pool[0], pool[0])
        for t in pool[1:]: pm.load_adapter(Path(save) / "lora" / t, t)
        return pm
    pm = pool_model()
    own = {}
    for t in pool:   # the pool as loaded: each LoRA on its own task (multitask_sources.json has the same figures)
        enc, tok, n = _data(t, None); pm.set_adapter(t); own[t] = score(pm, make_loader(enc["test"], tok, 128), n)
    enc, tok, n = _data(target, None)
    test = make_loader(enc["test"], tok, 128)
    pm.set_adapter(head); zero = {"head's LoRA": score(pm, test, n)}
    lorahub_compose(pm, pool, [1 / len(pool)] * len(pool), "average", heads_from=head); pm.set_adapter("average")
    zero["pool average"] = score(pm, test, n); pm.set_adapter(head); pm.delete_adapter("average")
    print(f"zero-shot {zero}", flush=True)
    rows = []
    for s in range(seeds):
        few = enc["train"].shuffle(seed=s).select(range(shots))
        batch = next(iter(make_loader(few, tok, shots)))
        t0 = time.time()
        res = lorahub_search(pm, pool, [batch], trials=trials, seed=s, new_name="lorahub", heads_from=head)
        rows.append({"seed": s, "kind": "LoraHub", "accuracy": score(pm, test, n), "weights": res.weights, "objective": res.objective,
                     "start": res.start, "history": res.history, "seconds": time.time() - t0})
        pm.set_adapter(head); pm.delete_adapter("lorahub")
        loader = lambda: make_loader(few, tok, shots, shuffle=True, seed=s)
        t0 = time.time(); fresh = get_peft_model(load_minilm(num_labels=WIDTH, seed=0)[0], list_methods()["lora"](**METHODS["lora"]))
        h = fit(fresh, loader(), epochs=tune_steps, lr=LRS["lora"], seed=s, progress=False)
        rows.append({"seed": s, "kind": "LoRA on the shots", "accuracy": score(fresh, test, n), "losses": h.losses, "seconds": time.time() - t0})
        t0 = time.time(); cont = PeftModel.from_pretrained(load_minilm(num_labels=WIDTH, seed=0)[0], Path(save) / "lora" / head, head, is_trainable=True)
        h = fit(cont, loader(), epochs=tune_steps, lr=LRS["lora"], seed=s, progress=False)
        rows.append({"seed": s, "kind": "head's LoRA tuned on the shots", "accuracy": score(cont, test, n), "losses": h.losses, "seconds": time.time() - t0})
        print(f"seed {s}: " + " ".join(f"{x['kind']} {x['accuracy']:.4f}" for x in rows[-3:]), flush=True)
    r = {"target": target, "pool": pool, "head": head, "shots": shots, "trials": trials, "tune_steps": tune_steps,
         "own": own, "zero_shot": zero, "rows": rows, "provenance": provenance(methods=["lora", "harness"])}
    if out: Path(out).write_text(json.dumps(r, indent=1))
    return r

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["sources", "merging", "fusion", "lorahub"])
    ap.add_argument("--save", default="runs/multitask"); ap.add_argument("--out", default=None)
    ap.add_argument("--train-size", type=int, default=4000); ap.add_argument("--epochs", type=float, default=3)   # at 2,000 x 2 (125 steps) sst2_negated's LoRA and sst2's Pfeiffer stayed at the majority class
    ap.add_argument("--tasks", default=",".join(SOURCES), help="source tasks (fusion: all but the last, sst2_negated, by default)")
    ap.add_argument("--merges", default=",".join(m[0] for m in MERGES), help="merging: which rows of MERGES")
    ap.add_argument("--methods", default="lora,pfeiffer", help="sources: which adapters to train per task (merging needs lora, fusion pfeiffer)")
    ap.add_argument("--sizes", default="100,1676", help="fusion: the target's training sizes")
    ap.add_argument("--steps", type=int, default=100, help="fusion: about this many training steps at every size")
    ap.add_argument("--seeds", type=int, default=5, help="lorahub: draws of the few examples")
    ap.add_argument("--trials", type=int, default=40, help="lorahub: the search's trials")
    ap.add_argument("--head", default="bbc_topic", help="lorahub: the pool task whose classifier the composed LoRA takes")
    ap.add_argument("--shots", type=int, default=20, help="lorahub: the target's training rows each search sees")
    ap.add_argument("--tune-steps", type=int, default=30, help="lorahub: steps of the LoRAs trained on the shots")
    a = ap.parse_args()
    tasks = a.tasks.split(",")
    if a.what == "sources": sources(a.save, a.out, a.train_size, a.epochs, tasks, a.methods.split(","))
    elif a.what == "merging": merging(a.save, a.out, tasks, [m for m in MERGES if m[0] in a.merges.split(",")])
    elif a.what == "lorahub": lorahub(a.save, a.out, pool=tasks, head=a.head, shots=a.shots, seeds=a.seeds, trials=a.trials, tune_steps=a.tune_steps)
    else: fusion(a.save, a.out, sizes=[int(x) for x in a.sizes.split(",")], tasks=[t for t in tasks if t != "sst2_negated"], steps=a.steps)
