"""The toy multimodal LLM's stored comparison (chapter *A multimodal LLM at toy scale*): the character LLaMA, frozen,
answers "which digit is this?" about MNIST-5k's ten digits from the stored ViT's features (frozen) through each connector.

    python bench/mllm_connectors.py --out results/mllm_digits.json          # ~20 min on 2 cores (two worker processes)

Connectors: a linear projection (LLaVA), a two-layer MLP (LLaVA-1.5), a one-block resampler of 8 learned queries
(Q-Former-style), and the zero-gated injection (the resampler's 8 tokens added to LLaMA-Adapter prompts in the first
2 layers, gates from zero); each prefix connector also with LoRA (r = 8, alpha = 16) on the language model's q_proj
and v_proj ("+lora"; otherwise the language model is frozen whole). Data: the 4,000 training images of split_classes(range(10)) less a validation split of 50
a class; the 1,000 test images. Each connector's learning rate is chosen first from a grid of three by its answers'
accuracy on the validation split after `--select-steps` steps (seed 100); then three seeds of `--steps` steps (batches
of 32, AdamW, a constant rate after a 5% warm-up) are scored by their greedy answers on the test images (exactly
the digit's name). A row records the accuracy, the trained numbers, the image tokens in the sequence, the mean step
time (one thread) and the last losses. The reference: a linear probe of the ViT's [CLS] features on the same split."""
import argparse, json, multiprocessing, sys, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ["linear", "mlp", "resampler", "gated", "linear+lora", "mlp+lora", "resampler+lora"]   # +lora: LoRA r = 8 on the LM's q_proj, v_proj beside the connector
LRS = [1e-3, 3e-3, 1e-2]
DATA = None

def _data():
    import torch
    from peft_notes.multimodal_llm import patch_features
    from peft_notes.vision import load_digit_vit, mnist_images, split_classes
    torch.set_num_threads(1)
    t = split_classes(*mnist_images(), range(10))
    x, y = t["train"]
    g = torch.Generator().manual_seed(123)
    val = torch.cat([(y == c).nonzero().flatten()[torch.randperm(int((y == c).sum()), generator=g)[:50]] for c in range(10)])
    keep = torch.ones(len(y), dtype=torch.bool); keep[val] = False
    vit = load_digit_vit(ROOT / "nbs" / "assets" / "digit_vit")[0]
    f = lambda z: patch_features(vit, z)
    return {"train": (f(x[keep]), y[keep]), "val": (f(x[val]), y[val]), "test": (f(t["test"][0]), t["test"][1])}

def _init(limit=None):
    global DATA
    DATA = _data()
    if limit: DATA = {k: (x[:limit], y[:limit]) if k != "train" else (x, y) for k, (x, y) in DATA.items()}

def run_one(job:dict)->dict:
    "Train one connector at one rate and seed; score its greedy answers."
    import torch
    torch.set_num_threads(1)
    from peft_notes.foundations import load_char_llama
    from peft_notes.multimodal import DIGIT_NAMES
    from peft_notes.multimodal_llm import VisionLanguageLM, answer_accuracy, digit_qa_batch
    lm, tok, _ = load_char_llama(ROOT / "nbs" / "assets" / "char_llama")
    torch.manual_seed(job["seed"])
    base, _, lora = job["kind"].partition("+")
    m = VisionLanguageLM(lm, 64, base, lora_rank=8 if lora else 0)
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=job["lr"])
    warm = max(1, job["steps"] // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    (fx, fy), g = DATA["train"], torch.Generator().manual_seed(job["seed"])
    losses, times = [], []
    m.train()
    for _ in range(job["steps"]):
        i = torch.randint(0, len(fy), (32,), generator=g)
        t0 = time.perf_counter()
        loss = m(**digit_qa_batch(fx[i], fy[i], tok, DIGIT_NAMES)).loss
        loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step(); sched.step(); opt.zero_grad()
        times.append(time.perf_counter() - t0); losses.append(loss.item())
    sx, sy = DATA[job["on"]]
    return {**job, "accuracy": answer_accuracy(m, sx, sy, tok, DIGIT_NAMES), "trained": sum(p.numel() for p in params),
            "image_tokens": 0 if base == "gated" else (8 if base == "resampler" else fx.shape[1]),
            "step_seconds": sum(times[5:]) / max(1, len(times[5:])), "final_loss": sum(losses[-20:]) / len(losses[-20:])}

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/mllm_digits.json")
    ap.add_argument("--kinds", nargs="+", default=KINDS[:4])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--select-steps", type=int, default=300)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--eval-limit", type=int, default=None, help="score on the first N validation and test images only (a quick check)")
    a = ap.parse_args()
    if (bad := sorted(set(a.kinds) - set(KINDS))): sys.exit(f"unknown connectors {bad}; choose from {KINDS}")
    t0 = time.time()
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(a.workers, mp_context=spawn, initializer=_init, initargs=(a.eval_limit,)) as pool:
        grid = [{"kind": k, "lr": lr, "seed": 100, "steps": a.select_steps, "on": "val"} for k in a.kinds for lr in LRS]
        selection = list(pool.map(run_one, grid))
        lr_of = {k: max((r for r in selection if r["kind"] == k), key=lambda r: (r["accuracy"], -r["lr"]))["lr"] for k in a.kinds}
        print("learning rates chosen on validation:", lr_of, flush=True)
        rows = list(pool.map(run_one, [{"kind": k, "lr": lr_of[k], "seed": s, "steps": a.steps, "on": "test"} for k in a.kinds for s in range(a.seeds)]))
    import torch
    from peft_notes.harness import provenance
    from peft_notes.vision import linear_probe
    torch.set_num_threads(1)
    _init(a.eval_limit); d = DATA
    probe = linear_probe(d["train"][0][:, 0], d["train"][1], d["test"][0][:, 0], d["test"][1])
    out = {"what": __doc__.splitlines()[0], "lr_selection": selection, "learning_rates": lr_of, "rows": rows, "linear_probe_cls": probe,
           "seconds": round(time.time() - t0, 1), "provenance": provenance(methods=["llama_adapter"])}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True); Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"{len(rows)} runs in {out['seconds']:.0f} s -> {a.out}; probe {probe:.3f}")
