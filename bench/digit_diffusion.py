"""Train the diffusion chapters' judge (a ten-digit ViT at 16x16) and their text-to-image base (a small UNet on MNIST's
digits 0-4, conditioned on the shipped MiniLM's token states), score the base, and store both in nbs/assets/
(~25 min on 2 cores).

    python bench/digit_diffusion.py [--epochs 120] [--scorer-epochs 60] [--out nbs/assets/digit_unet] [--scorer-out nbs/assets/digit_scorer]

The chapters (nbs/79_diffusion.ipynb and after) load the stored models; the chapter's slow cell repeats this run.
"""
import argparse, time
import torch
from peft_notes.diffusion import (caption, digit_diffusion, digit_split, load_digit_diffusion, sample_digits, save_digit_diffusion,
                                  score_samples, scorer_pixels, to_model, train_digit_diffusion, train_digit_scorer, image_features,
                                  frechet_distance, read_digits)
from peft_notes.train import provenance
from peft_notes.vision import load_digit_vit, mnist_images, save_digit_vit

def epoch_means(losses, epochs):
    per = max(1, len(losses) // max(1, round(epochs)))
    return [round(sum(c) / len(c), 5) for c in (losses[i:i + per] for i in range(0, len(losses), per))]

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=float, default=120)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--scorer-epochs", type=float, default=60)
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 3.0, 5.0])
    ap.add_argument("--per-digit", type=int, default=100, help="samples of each digit scored at each guidance weight")
    ap.add_argument("--chapter-per-digit", type=int, default=20, help="the chapter's own sample: this many of each digit, seed 0")
    ap.add_argument("--channels", type=int, nargs="+", default=[32, 64, 64], help="the UNet's width at each resolution")
    ap.add_argument("--out", default="nbs/assets/digit_unet")
    ap.add_argument("--scorer-out", default="nbs/assets/digit_scorer")
    a = ap.parse_args()
    torch.set_num_threads(2)
    prov = provenance()
    digits = digit_split(*mnist_images())
    # the judge: all ten digits
    t0 = time.perf_counter()
    scorer, hs = train_digit_scorer(digits, epochs=a.scorer_epochs)
    test_read = read_digits(scorer, digits["test"][0])
    acc10 = (test_read == digits["test"][1]).float().mean().item()
    save_digit_vit(scorer, a.scorer_out, digits=list(range(10)), image_size=16, epochs=a.scorer_epochs, steps=len(hs.losses),
                   epoch_losses=epoch_means(hs.losses, a.scorer_epochs), test_accuracy=acc10,
                   test_accuracy_per_digit={d: (test_read[digits["test"][1] == d] == d).float().mean().item() for d in range(10)},
                   seconds=round(time.perf_counter() - t0, 1), provenance=prov)
    print(f"judge: {len(hs.losses)} steps in {time.perf_counter() - t0:.0f} s, test accuracy on 0-9 {acc10:.3f}", flush=True)
    scorer = load_digit_vit(a.scorer_out)[0]
    # the generator: digits 0-4
    pool = {k: (v[0][v[1] < 5], v[1][v[1] < 5]) for k, v in digits.items()}
    model = digit_diffusion(seed=0, channels=tuple(a.channels))
    t0 = time.perf_counter()
    h = train_digit_diffusion(model, to_model(pool["train"][0]), [caption(int(d)) for d in pool["train"][1]], epochs=a.epochs, lr=a.lr, seed=0)
    seconds = time.perf_counter() - t0
    print(f"generator: {len(h.losses)} steps in {seconds:.0f} s, last epoch's loss {sum(h.losses[-30:]) / 30:.4f}", flush=True)
    real = pool["test"][0]
    balanced = torch.cat([pool["train"][0][pool["train"][1] == d][:100] for d in range(5)])   # 100 training images of each digit (the split is ordered by digit)
    reference = {"judge_accuracy_real_test_0_4": (read_digits(scorer, real) == pool["test"][1]).float().mean().item(),
                 "frechet_real_train_vs_test_0_4": frechet_distance(image_features(scorer, scorer_pixels(balanced)), image_features(scorer, scorer_pixels(real)))}
    model.eval()
    asked = torch.arange(5).repeat_interleave(a.per_digit)
    rows = []
    for w in a.guidance:
        t1 = time.perf_counter()
        imgs = sample_digits(model, [caption(int(d)) for d in asked], seed=0, guidance=w)
        r = score_samples(scorer, imgs, asked, real)
        rows.append({"guidance": w, **r, "samples": len(asked), "seconds": round(time.perf_counter() - t1, 1)})
        print(f"guidance {w}: asked digit {r['accuracy']:.3f} {[round(v, 2) for v in r['per_digit'].values()]}, Frechet {r['frechet']:.2f}", flush=True)
    w = 3.0                                                           # what DDIM's default clipping of x_0 does to guidance
    imgs = sample_digits(model, [caption(int(d)) for d in asked], seed=0, guidance=w, clip_sample=True)
    clipped = {"guidance": w, "clip_sample": True, **score_samples(scorer, imgs, asked, real)}
    print(f"guidance {w} with x_0 clipped: asked digit {clipped['accuracy']:.3f}", flush=True)
    best = max(rows, key=lambda r: (round(r["accuracy"], 2), -r["frechet"]))["guidance"]
    asked_c = torch.arange(5).repeat_interleave(a.chapter_per_digit)
    imgs = sample_digits(model, [caption(int(d)) for d in asked_c], seed=0, guidance=best)
    chapter = {"guidance": best, "per_digit_samples": a.chapter_per_digit, "seed": 0, **score_samples(scorer, imgs, asked_c, real)}
    save_digit_diffusion(model, a.out, digits=list(range(5)), seed=0, epochs=a.epochs, lr=a.lr, batch_size=64, caption_drop=0.1,
                         steps=len(h.losses), epoch_losses=epoch_means(h.losses, a.epochs), seconds=round(seconds, 1),
                         parameters=sum(p.numel() for p in model.unet.parameters()), guidance=rows, clipped=clipped, reference=reference,
                         chapter_sample=chapter, judge=a.scorer_out, provenance=prov)
    again, _ = load_digit_diffusion(a.out)
    assert torch.equal(sample_digits(again, [caption(int(d)) for d in asked_c], seed=0, guidance=best), imgs), "the stored generator does not draw what it drew"
    print(f"stored in {a.out}; the chapter's sample (guidance {best}): asked digit {chapter['accuracy']:.3f}", flush=True)
