"""The stored result of chapter *Prompt transfer: SPoT, ATTEMPT, MPT*: soft prompts moved between the suite's tasks
(chapter *Multi-task PEFT: the tasks*) on the shipped MiniLM, every model with one classifier 6 wide (a task with n
classes is scored on its first n logits), prompt and classifier trained together.

    PEFT_NOTES_DATA=../shared/data python bench/prompt_transfer.py --save runs/prompts --out results/multitask_prompts.json

1. Sources: a prompt (l = 10) and a classifier per source task, `--source-steps` steps of batch 32.
2. MPT's first stage: one shared prompt and a rank-one matrix per source task, trained on the sources in turn (each
   batch one task, that task's trained classifier frozen in place), with the task loss plus the distillation term
   (KL to the source prompt's outputs, MSE of the last hidden states).
3. The target (`--target`, a task none of the sources is) at `--target-size` rows, `--target-steps` steps each:
   prompt tuning from sampled vocabulary (the baseline), SPoT from each source, ATTEMPT over all sources, MPT from the
   shared prompt; a fresh classifier every time.
4. SPoT's predictor: the target's prompt after `--probe-steps` steps, compared with each source prompt (both of the
   paper's similarity measures)."""
import argparse, json, sys, time
from pathlib import Path
import torch
import torch.nn.functional as F
sys.path.insert(0, str(Path(__file__).parent))
from multitask import WIDTH, _data, score

SOURCES = ["sst2", "bbc_topic", "bbc_headline", "dialogue_topic", "shakespeare_speaker"]
TARGET, L, LR = "bbc_sentence_topic", 10, 3e-2   # the additive table's prompt-tuning rate

def _minilm():
    from peft_notes.models import load_minilm
    return load_minilm(num_labels=WIDTH, seed=0)[0]

def _loader(enc, tok, steps, size_hint=32):
    "A shuffled loader and the (fractional) epochs that make about `steps` steps of batch 32."
    from peft_notes.train import make_loader
    dl = make_loader(enc["train"], tok, 32, shuffle=True, seed=0)
    return dl, steps / len(dl)

def _fit(pm, enc, tok, steps):
    from peft_notes.train import fit
    dl, epochs = _loader(enc, tok, steps)
    return fit(pm, dl, epochs=epochs, lr=LR, seed=0, progress=False)

def _head(folder):
    "The trained classifier's weight and bias from a saved prompt adapter (modules_to_save)."
    from peft_notes.core import WEIGHTS_NAME, read_safetensors
    t = read_safetensors(Path(folder) / WEIGHTS_NAME)
    w = [k for k in t if "classifier" in k and k.endswith("weight")]; b = [k for k in t if "classifier" in k and k.endswith("bias")]
    return t[w[0]], t[b[0]]

def sources(save, tasks, steps, train_size):
    from peft_notes.core import get_peft_model
    from peft_notes.methods.additive.prompts import PromptTuningConfig
    from peft_notes.train import make_loader
    rows = []
    for task in tasks:
        t0 = time.time(); enc, tok, n = _data(task, train_size)
        pm = get_peft_model(_minilm(), PromptTuningConfig(num_virtual_tokens=L, modules_to_save=["classifier"]), task)
        h = _fit(pm, enc, tok, steps); pm.save_adapter(Path(save) / "prompt" / task, task)
        acc = score(pm, make_loader(enc["test"], tok, 128), n)
        rows.append({"task": task, "classes": n, "train_size": len(enc["train"]), "steps": len(h.losses), "accuracy": acc, "losses": h.losses, "seconds": time.time() - t0})
        print(f"source {task:22s} {acc:.4f}  ({time.time() - t0:.0f} s)", flush=True)
    return rows

def mpt_stage_one(save, tasks, steps, train_size, lam=1.0):
    "The shared prompt and task matrices, distilled from the source prompts; saved under save/mpt."
    from peft_notes.core import PeftModel, get_peft_model
    from peft_notes.methods.multitask.prompt_transfer import MPTConfig, mpt_distillation_loss
    t0 = time.time()
    student = get_peft_model(_minilm(), MPTConfig(num_virtual_tokens=L, num_tasks=len(tasks)), "mpt")
    data = {t: _data(t, train_size) for t in tasks}
    teachers = {t: PeftModel.from_pretrained(_minilm(), Path(save) / "prompt" / t, t).eval() for t in tasks}
    heads = {t: _head(Path(save) / "prompt" / t) for t in tasks}
    its = {t: iter(()) for t in tasks}
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=LR)
    losses = []; student.train(); torch.manual_seed(0)
    for step in range(steps):
        k = step % len(tasks); t = tasks[k]; enc, tok, n = data[t]
        try: b = next(its[t])
        except StopIteration: its[t] = iter(_loader(enc, tok, 1)[0]); b = next(its[t])
        with torch.no_grad():
            student.base_model.classifier.weight.copy_(heads[t][0]); student.base_model.classifier.bias.copy_(heads[t][1])
            y = b.pop("labels"); out_t = teachers[t](**b, output_hidden_states=True)
        out_s = student(**b, task_ids=k, output_hidden_states=True)
        loss = F.cross_entropy(out_s.logits[:, :n], y) + lam * mpt_distillation_loss(out_s, out_t)
        opt.zero_grad(); loss.backward(); opt.step(); losses.append(loss.item())
    student.save_adapter(Path(save) / "mpt", "mpt")
    print(f"MPT stage one: {steps} steps, loss {losses[0]:.3f} -> {sum(losses[-20:]) / len(losses[-20:]):.3f}  ({time.time() - t0:.0f} s)", flush=True)
    return {"steps": steps, "lambda": lam, "losses": losses, "seconds": time.time() - t0}

def targets(save, tasks, target, size, steps, probe_steps, test_size=None):
    from peft_notes.core import get_peft_model
    from peft_notes.methods.additive.prompts import PromptTuningConfig
    from peft_notes.methods.multitask.prompt_transfer import AttemptConfig, MPTConfig, SpotConfig, prompt_similarity, read_prompt
    from peft_notes.train import make_loader
    enc, tok, n = _data(target, size)
    test = make_loader(enc["test"] if test_size is None else enc["test"].select(range(min(test_size, len(enc["test"])))), tok, 128)
    src = {t: str(Path(save) / "prompt" / t) for t in tasks}
    runs = [("prompt_tuning", None, PromptTuningConfig(num_virtual_tokens=L, modules_to_save=["classifier"]))]
    runs += [("spot", t, SpotConfig(num_virtual_tokens=L, source_prompt=src[t], modules_to_save=["classifier"])) for t in tasks]
    runs += [("attempt", None, AttemptConfig(num_virtual_tokens=L, source_prompts=[src[t] for t in tasks], modules_to_save=["classifier"])),
             ("mpt", None, MPTConfig(num_virtual_tokens=L, init_from=str(Path(save) / "mpt"), modules_to_save=["classifier"]))]
    rows = []
    for kind, source, cfg in runs:
        t0 = time.time(); pm = get_peft_model(_minilm(), cfg, "target")
        h = _fit(pm, enc, tok, steps); acc = score(pm, test, n)
        row = {"kind": kind, "source": source, "target": target, "train_size": len(enc["train"]), "steps": len(h.losses), "accuracy": acc,
               "trainable": pm.trainable_report().trainable, "losses": h.losses, "seconds": time.time() - t0}
        if kind == "attempt":   # the mean attention over the test set: which prompts the target reads
            mod, tot, k = pm.adapter_inputs["target"], 0, 0
            with torch.no_grad():
                for b in test: b.pop("labels"); pm.eval()(**b); tot = tot + mod.last_weights.sum(0); k += len(mod.last_weights)
            row["attention"] = dict(zip([*tasks, "target"], (tot / k).tolist()))
        rows.append(row); print(f"target {kind:14s} {source or '':22s} {acc:.4f}  ({time.time() - t0:.0f} s)", flush=True)
    t0 = time.time(); probe = get_peft_model(_minilm(), PromptTuningConfig(num_virtual_tokens=L, modules_to_save=["classifier"]), "probe")
    _fit(probe, enc, tok, probe_steps)
    sim = {t: {"average": prompt_similarity(probe, src[t]), "per_token": prompt_similarity(probe, src[t], "per_token")} for t in tasks}
    print(f"probe ({probe_steps} steps, {time.time() - t0:.0f} s): " + ", ".join(f"{t} {s['average']:.3f}" for t, s in sim.items()), flush=True)
    return rows, sim

def main(save, out, tasks=SOURCES, target=TARGET, source_steps=200, source_size=3200, mpt_steps=250, target_size=100, target_steps=100, probe_steps=30, test_size=None):
    from peft_notes.harness import provenance
    r = {"sources": tasks, "target": target, "prompt_length": L, "lr": LR, "width": WIDTH,
         "source_rows": sources(save, tasks, source_steps, source_size), "mpt_stage_one": mpt_stage_one(save, tasks, mpt_steps, source_size)}
    r["target_rows"], r["similarity"] = targets(save, tasks, target, target_size, target_steps, probe_steps, test_size)
    r["probe_steps"] = probe_steps
    r["provenance"] = provenance(methods=["prompt_tuning", "spot", "attempt", "mpt", "harness"])
    if out: Path(out).write_text(json.dumps(r, indent=1))
    return r

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--save", default="runs/prompts"); ap.add_argument("--out", default=None)
    ap.add_argument("--tasks", default=",".join(SOURCES)); ap.add_argument("--target", default=TARGET)
    ap.add_argument("--source-steps", type=int, default=200); ap.add_argument("--source-size", type=int, default=3200)
    ap.add_argument("--mpt-steps", type=int, default=250)
    ap.add_argument("--target-size", type=int, default=100); ap.add_argument("--target-steps", type=int, default=100)
    ap.add_argument("--probe-steps", type=int, default=30)
    ap.add_argument("--test-size", type=int, default=None, help="score the target on this many test rows (default: all)")
    a = ap.parse_args()
    main(a.save, a.out, a.tasks.split(","), a.target, a.source_steps, a.source_size, a.mpt_steps, a.target_size, a.target_steps, a.probe_steps, a.test_size)
