"""Teach the stored digit generator (nbs/assets/digit_unet, digits 0-4) two new digits, five and six, as two separate
DreamBooth-LoRAs (r = 4, on the UNet's attention, with prior preservation), and store both adapters for chapter 79d,
which runs them together with weights and merges them; then scores the combinations the chapter shows (~8 min on 2 cores).

    python bench/digit_lora_pair.py [--steps 400] [--shots 8] [--out nbs/assets/digit_loras]

Each LoRA trains as bench/diffusion_few_shot.py's "dreambooth-lora" row does: the shared loop (AdamW, lr 3e-3, linear
schedule, 5% warm-up), batches of 8 of the digit's images (the first 8 of the training split) and 8 of the base's own
samples of 0-4 (40 drawn once, seed 1) weighted 1, caption "a handwritten digit five" / "six". Written to
<out>/<digit>/ (adapter_config.json + adapter_model.safetensors, naming their base as the chapters load it:
assets/digit_unet) and <out>/digit_loras.json (the record: each LoRA alone, and each combination — both at weights 1
and 1 and at 0.5 and 0.5 (`set_adapters`), merged exactly (`merge_adapters`, cat) and to rank 4 (svd) — read by the
judge on 100 samples asked for a five, 100 for a six and 100 for 0-4).
"""
import argparse, json, time
from pathlib import Path
import torch

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--digits", type=int, nargs="+", default=[5, 6])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--shots", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--samples", type=int, default=100, help="samples of each new digit, and of 0-4 together, scored after training")
    ap.add_argument("--ddim-steps", type=int, default=25, help="DDIM steps a sample (the chapters' 25; fewer only to test the script quickly)")
    ap.add_argument("--base", default="nbs/assets/digit_unet")
    ap.add_argument("--judge", default="nbs/assets/digit_scorer")
    ap.add_argument("--out", default="nbs/assets/digit_loras")
    ap.add_argument("--base-name", default="assets/digit_unet", help="the base's name the adapters record: the path the chapters load it from (relative to nbs/)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from peft_notes.core import get_peft_model
    from peft_notes.diffusion import caption, digit_split, load_digit_diffusion, read_digits, sample_digits, to_model
    from peft_notes.harness import provenance
    from peft_notes.methods.diffusion.few_shot import DreamBoothConfig, few_shot_loader
    from peft_notes.multimodal import DIGIT_NAMES
    from peft_notes.train import fit
    from peft_notes.vision import load_digit_vit, mnist_images
    prov = provenance(methods=["dreambooth"])
    base, info = load_digit_diffusion(a.base)
    judge, _ = load_digit_vit(a.judge)
    w = info["chapter_sample"]["guidance"]
    digits = digit_split(*mnist_images())
    cls_prompts = [caption(d) for d in range(5) for _ in range(8)]
    cls_imgs = to_model(sample_digits(base, cls_prompts, seed=1, guidance=w, steps=a.ddim_steps))
    out, record = Path(a.out), {"provenance": prov, "protocol": {k: v for k, v in vars(a).items() if k not in ("out", "threads")}, "loras": {}}
    asked = torch.arange(5).repeat_interleave(a.samples // 5)
    for d in a.digits:
        shots = to_model(digits["train"][0][digits["train"][1] == d][:a.shots])
        torch.manual_seed(0)
        pm = get_peft_model(base, DreamBoothConfig(r=4, alpha=4, base_model_name_or_path=a.base_name))
        t0 = time.perf_counter()
        h = fit(pm, few_shot_loader(pm, shots, caption(d), cls_imgs, cls_prompts, batch_size=8, steps=a.steps, seed=0), epochs=1, lr=a.lr,
                warmup=0.05, seed=0, progress=False)
        seconds = time.perf_counter() - t0
        pm.eval()
        new = (read_digits(judge, sample_digits(pm, [caption(d)] * a.samples, seed=0, guidance=w, steps=a.ddim_steps)) == d).float().mean().item()
        old = (read_digits(judge, sample_digits(pm, [caption(int(k)) for k in asked], seed=0, guidance=w, steps=a.ddim_steps)) == asked).float().mean().item()
        name = DIGIT_NAMES[d]
        pm.save_adapter(out / name)
        base = pm.unload()                                              # the base again, for the next digit
        record["loras"][name] = {"digit": d, "steps": len(h.losses), "train_seconds": round(seconds, 1), "final_loss": round(sum(h.losses[-40:]) / 40, 5),
                                 "new_digit_accuracy": new, "old_accuracy": old, "samples": a.samples, "guidance": w}
        print(f"{name}: {len(h.losses)} steps in {seconds:.0f} s; asked for a {name}: {new:.2f}; 0-4: {old:.2f}", flush=True)
    from peft_notes.core import PeftModel
    from peft_notes.methods.diffusion.compose import set_adapters
    from peft_notes.methods.multitask.merging import merge_adapters
    import warnings
    with warnings.catch_warnings():                                    # they name their base as the chapters load it (assets/digit_unet), not as loaded here
        warnings.simplefilter("ignore")
        pm = PeftModel.from_pretrained(base, out / "five", adapter_name="five")
        pm.load_adapter(out / "six", adapter_name="six")
    merge_adapters(pm, ["five", "six"], [1.0, 1.0], how="cat", new_name="five_six")
    merge_adapters(pm, ["five", "six"], [1.0, 1.0], how="svd", rank=4, new_name="five_six_r4")
    record["combinations"] = {}
    for label, names, weights in [("five alone", ["five"], None), ("six alone", ["six"], None), ("both, weights 1 and 1", ["five", "six"], [1.0, 1.0]),
                                  ("both, weights 0.5 and 0.5", ["five", "six"], [0.5, 0.5]), ("merged (cat, rank 8)", ["five_six"], None),
                                  ("merged (svd, rank 4)", ["five_six_r4"], None)]:
        set_adapters(pm, names, weights)
        r5, r6 = (read_digits(judge, sample_digits(pm, [caption(d)] * a.samples, seed=0, guidance=w, steps=a.ddim_steps)) for d in (5, 6))
        old = (read_digits(judge, sample_digits(pm, [caption(int(k)) for k in asked], seed=0, guidance=w, steps=a.ddim_steps)) == asked).float().mean().item()
        record["combinations"][label] = {"asked five: a five": (r5 == 5).float().mean().item(), "asked five: a six": (r5 == 6).float().mean().item(),
                                         "asked six: a six": (r6 == 6).float().mean().item(), "asked six: a five": (r6 == 5).float().mean().item(), "asked 0-4: right": old}
        print(label, {k: round(v, 2) for k, v in record["combinations"][label].items()}, flush=True)
    (out / "digit_loras.json").write_text(json.dumps(record, indent=1))
