"""The stored results of chapter *Mixtures of adapters: AdaMix and MOELoRA*, on the suite of chapter *Multi-task
PEFT: the tasks* with the shipped MiniLM (batch 32, seq 64, seed 0, AdamW with the harness's linear schedule).

    PEFT_NOTES_DATA=../shared/data python bench/mixtures.py adamix --out results/multitask_adamix.json
    PEFT_NOTES_DATA=../shared/data python bench/mixtures.py moelora --own runs/multitask --out results/multitask_moelora.json

`adamix`: one task (`--task`, SST-2), `--train-size` rows (4,000) for `--epochs` (3): a Houlsby adapter of the same bottleneck,
and AdaMix (M = 4) trained with the consistency term (λ = 1) and without it (λ = 0; still two routed passes a step,
so that only the term differs). Each AdaMix is scored averaged (its inference, equal to the merged adapter, which is
checked), through each single module pair (i, i), and with a fresh random route per layer and batch.
At 2,000 rows for 2 epochs (125 steps) the Houlsby adapter stayed at SST-2's majority class; 4,000 for 3 is the
setting at which the source adapters learned it.
`moelora`: five of the suite's source tasks (not bbc_headline), `--train-size` rows each at most, mixed in every
batch: one LoRA per task (own 6-wide head, trained alone: with `--own`, the ones `bench/multitask.py sources` saved
with the same rows and epochs), one LoRA shared by all tasks, and MOELoRA (N experts, a task gate); the shared and
MOELoRA models carry one classifier with a slice of logits per task and each row's loss is on its task's slice."""
import argparse, json, math, sys, time
from pathlib import Path
import torch
import torch.nn.functional as F
sys.path.insert(0, str(Path(__file__).parent))
from multitask import LRS, SOURCES, WIDTH, _data, score

def _schedule(opt, total, warmup=0.06):
    "The harness's schedule: linear warm-up over 6% of the steps, then linear decay."
    w = int(warmup * total)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / max(1, w) if s < w else max(0.0, (total - s) / max(1, total - w)))

def _loop(pm, loader, epochs, lr, loss_fn, seed=0):
    "AdamW over what requires grad, `epochs` passes of `loader`, `loss_fn(pm, batch)`; the losses."
    torch.manual_seed(seed)
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=lr)
    total = max(1, math.ceil(epochs * len(loader))); sched, losses, step = _schedule(opt, total), [], 0
    pm.train()
    while step < total:
        for b in loader:
            loss = loss_fn(pm, b); loss.backward(); opt.step(); sched.step(); opt.zero_grad()
            losses.append(loss.item()); step += 1
            if step >= total: break
    return losses

@torch.no_grad()
def _routed(pm, loader, n, route):
    "Accuracy with every AdaMix module's route set by `route(module)` before each batch ((i, j) or None for the average)."
    from peft_notes.methods.multitask.mixtures import MixtureBottleneck
    mods = [m for m in pm.modules() if isinstance(m, MixtureBottleneck)]
    pm.eval(); right = total = 0
    for b in loader:
        for m in mods: m.route = route(m)
        y = b.pop("labels"); right += (pm(**b).logits[:, :n].argmax(-1) == y).sum().item(); total += len(y)
    for m in mods: m.route = None
    return right / total

def adamix(out, task="sst2", train_size=4000, epochs=3, bottleneck=16, experts=4, lr=LRS["pfeiffer"]):
    from peft_notes.core import get_peft_model
    from peft_notes.harness import provenance
    from peft_notes.methods.additive.adapters import HoulsbyConfig
    from peft_notes.methods.multitask.mixtures import AdaMixConfig, adamix_loss, adamix_merge
    from peft_notes.models import load_minilm
    from peft_notes.train import make_loader
    enc, tok, n = _data(task, train_size)
    test = make_loader(enc["test"], tok, 128)
    train = make_loader(enc["train"], tok, 32, shuffle=True, seed=0)
    rows = []
    t0 = time.time()
    pm = get_peft_model(load_minilm(num_labels=WIDTH, seed=0)[0], HoulsbyConfig(bottleneck=bottleneck, modules_to_save=["classifier"]))
    losses = _loop(pm, train, epochs, lr, lambda m, b: m(**b).loss)
    rows.append({"kind": "houlsby", "accuracy": score(pm, test, n), "trainable": pm.trainable_report().trainable,
                 "stored": sum(t.numel() for t in pm.adapter_state_dict().values()), "losses": losses, "seconds": time.time() - t0})
    print(f"houlsby        {rows[-1]['accuracy']:.4f}  ({rows[-1]['seconds']:.0f} s)", flush=True)
    for lam in (1.0, 0.0):
        t0 = time.time()
        pm = get_peft_model(load_minilm(num_labels=WIDTH, seed=0)[0], AdaMixConfig(bottleneck=bottleneck, experts=experts, consistency=lam, modules_to_save=["classifier"]))
        losses = _loop(pm, train, epochs, lr, adamix_loss)
        trainable = pm.trainable_report().trainable
        averaged = score(pm, test, n)
        single = [_routed(pm, test, n, lambda m, i=i: (i, i)) for i in range(experts)]
        g = torch.Generator().manual_seed(0)
        random = _routed(pm, test, n, lambda m: tuple(torch.randint(experts, (2,), generator=g).tolist()))
        adamix_merge(pm); pm.set_adapter("merged")
        merged = score(pm, test, n)
        rows.append({"kind": f"adamix λ={lam:g}", "consistency": lam, "accuracy": averaged, "merged_accuracy": merged,
                     "single_module_accuracy": single, "random_route_accuracy": random,
                     "trainable": trainable,
                     "stored": sum(t.numel() for t in pm.adapter_state_dict("default").values()),
                     "stored_merged": sum(t.numel() for t in pm.adapter_state_dict("merged").values()),
                     "losses": losses, "seconds": time.time() - t0})
        print(f"adamix λ={lam:g}   averaged {averaged:.4f} merged {merged:.4f} single {[round(s, 4) for s in single]} random {random:.4f}  ({rows[-1]['seconds']:.0f} s)", flush=True)
    r = {"task": task, "train_size": len(enc["train"]), "epochs": epochs, "lr": lr, "bottleneck": bottleneck, "experts": experts,
         "rows": rows, "provenance": provenance(methods=["houlsby", "adamix", "harness"])}
    if out: Path(out).write_text(json.dumps(r, indent=1))
    return r

def _mixed(tasks, train_size):
    "The tasks' tokenised splits, a `task_ids` column on each; the mixed training set; each task's classes and offset."
    from datasets import Value, concatenate_datasets
    parts, tests, classes = [], {}, {}
    for i, t in enumerate(tasks):
        enc, tok, n = _data(t, train_size)
        classes[t] = n
        parts.append(enc["train"].with_format(None).cast_column("label", Value("int64")).add_column("task_ids", [i] * len(enc["train"])).with_format("torch"))
        tests[t] = enc
    return concatenate_datasets(parts), tests, classes, tok

MOE_TASKS = ["sst2", "sst2_negated", "bbc_topic", "dialogue_topic", "shakespeare_speaker"]   # the sources but bbc_headline (saturated at 0.99, and the slowest)

def _slice_loss(offsets, widths):
    "Each row's cross-entropy on its own task's slice of the logits (the other tasks' logits masked out)."
    def loss(pm, b, gate=True):
        t = b["task_ids"]; y = b.pop("labels") + offsets[t]
        if not gate: b = {k: v for k, v in b.items() if k != "task_ids"}
        logits = pm(**b).logits
        cols = torch.arange(logits.shape[-1])
        mask = (cols[None] >= offsets[t][:, None]) & (cols[None] < (offsets[t] + widths[t])[:, None])
        return F.cross_entropy(logits.masked_fill(~mask, float("-inf")), y)
    return loss

def moelora(out, tasks=MOE_TASKS, train_size=4000, epochs=3, r=8, experts=4, task_dim=64, lr=LRS["lora"], own=None):
    from peft_notes.core import PeftModel, get_peft_model, list_methods
    from peft_notes.harness import provenance
    from peft_notes.methods.multitask.mixtures import MoELoraConfig
    from peft_notes.models import load_minilm
    from peft_notes.train import make_loader
    from multitask import METHODS, _train
    mixed, encs, classes, tok = _mixed(tasks, train_size)
    widths = torch.tensor([classes[t] for t in tasks]); offsets = torch.cumsum(widths, 0) - widths
    total_width = int(widths.sum())
    rows, target = [], dict(target_modules=["query", "value"], modules_to_save=["classifier"])
    for t in tasks:   # one LoRA per task, alone, on the same rows: trained here, or the ones `sources` saved under `own`
        t0 = time.time(); enc = encs[t]
        if own:
            pm = PeftModel.from_pretrained(load_minilm(num_labels=WIDTH, seed=0)[0], Path(own) / "lora" / t, t); h = None
        else:
            pm = get_peft_model(load_minilm(num_labels=WIDTH, seed=0)[0], list_methods()["lora"](**METHODS["lora"]), t)
            h = _train(pm, enc, tok, "lora", epochs)
        rows.append({"kind": "one LoRA per task", "task": t, "accuracy": score(pm, make_loader(enc["test"], tok, 128), classes[t]),
                     "trainable": sum(v.numel() for v in pm.adapter_state_dict(t).values()), "losses": h.losses if h else None,
                     "seconds": time.time() - t0, "from": str(own) if own else None})
        print(f"{t:22s} own LoRA {rows[-1]['accuracy']:.4f}  ({rows[-1]['seconds']:.0f} s)", flush=True)
    loss = _slice_loss(offsets, widths)
    train = make_loader(mixed, tok, 32, shuffle=True, seed=0)
    for kind, cfg, gate in (("one shared LoRA", list_methods()["lora"](r=r, alpha=2 * r, **target), False),
                            ("MOELoRA", MoELoraConfig(r=r, alpha=2 * r, experts=experts, num_tasks=len(tasks), task_dim=task_dim, **target), True)):
        t0 = time.time()
        pm = get_peft_model(load_minilm(num_labels=total_width, seed=0)[0], cfg)
        losses = _loop(pm, train, epochs, lr, lambda m, b: loss(m, b, gate))
        pm.eval()
        for i, t in enumerate(tasks):
            right = total = 0
            with torch.no_grad():
                for b in make_loader(encs[t]["test"], tok, 128):
                    y = b.pop("labels"); kw = {"task_ids": i} if gate else {}
                    right += (pm(**b, **kw).logits[:, offsets[i]:offsets[i] + widths[i]].argmax(-1) == y).sum().item(); total += len(y)
            rows.append({"kind": kind, "task": t, "accuracy": right / total, "trainable": pm.trainable_report().trainable,
                         "losses": losses if i == 0 else None, "seconds": time.time() - t0 if i == len(tasks) - 1 else None})
        print(f"{kind:16s} " + " ".join(f"{x['accuracy']:.4f}" for x in rows[-len(tasks):]) + f"  ({time.time() - t0:.0f} s)", flush=True)
        if gate:
            from peft_notes.methods.multitask.mixtures import MoELoraLayer
            layers = [(k, l) for k, l in pm.adapter_context().layers() if isinstance(l, MoELoraLayer)]
            emb = pm.adapter_shared["default"].task_embedding
            with torch.no_grad():
                gates = {k: [torch.softmax(l.moe_gate["default"](emb[i]), -1).tolist() for i in range(len(tasks))] for k, l in layers}
    r = {"tasks": tasks, "classes": classes, "train_size": {t: len(encs[t]["train"]) for t in tasks}, "epochs": epochs, "lr": lr,
         "r": r, "experts": experts, "task_dim": task_dim, "own_from": str(own) if own else None, "rows": rows, "gates": gates,
         "provenance": provenance(methods=["lora", "moelora", "harness"])}
    if out: Path(out).write_text(json.dumps(r, indent=1))
    return r

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["adamix", "moelora"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--task", default="sst2", help="adamix: the task")
    ap.add_argument("--tasks", default=",".join(MOE_TASKS), help="moelora: the tasks mixed")
    ap.add_argument("--train-size", type=int, default=4000, help="rows per task at most")
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--lr", type=float, default=None, help="the learning rate (adamix: 1e-3, the source adapters'; moelora: 3e-3, the LoRAs')")
    ap.add_argument("--own", default=None, help="moelora: a `bench/multitask.py sources --save` folder whose per-task LoRAs (trained on the same rows for the same epochs) are the per-task rows, instead of training them again")
    a = ap.parse_args()
    if a.what == "adamix": adamix(a.out, a.task, a.train_size, a.epochs, lr=a.lr or LRS["pfeiffer"])
    else: moelora(a.out, a.tasks.split(","), a.train_size, a.epochs, lr=a.lr or LRS["lora"], own=a.own)
