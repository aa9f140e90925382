"""Train the vision-language chapters' two towers (DigitCLIP: the stored ViT as image tower, the shipped MiniLM frozen as
text tower, two projections, CLIP's contrastive loss on captions of the digits 0-4) and store them in nbs/assets/digit_clip/.

    python bench/digit_clip.py [--epochs 20] [--out nbs/assets/digit_clip]

The chapters (nbs/75_vision_language.ipynb and after) load the stored model; the chapter's slow cell repeats this run.
The record holds the zero-shot accuracy on the held-out digits 0-4, on 5-9 (never seen) and on scikit-learn's 8x8 digits.
"""
import argparse, time
from pathlib import Path
from peft_notes.multimodal import DIGIT_NAMES, digit_clip, save_digit_clip, train_digit_clip
from peft_notes.train import evaluate, provenance
from peft_notes.vision import image_loader, mnist_images, sklearn_digit_images, split_classes

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=float, default=20)
    ap.add_argument("--out", default="nbs/assets/digit_clip")
    a = ap.parse_args()
    x, y = mnist_images()
    tasks = {"0-4": (split_classes(x, y, range(5)), DIGIT_NAMES[:5]), "5-9": (split_classes(x, y, range(5, 10)), DIGIT_NAMES[5:]),
             "8x8 digits": (split_classes(*sklearn_digit_images(), range(10), test_per_class=50), DIGIT_NAMES)}
    model, tok = digit_clip(ROOT / "nbs" / "assets" / "digit_vit")
    t0 = time.perf_counter()
    h = train_digit_clip(model, tok, tasks["0-4"][0], tasks["0-4"][1], epochs=a.epochs)
    seconds = time.perf_counter() - t0
    zero_shot = {}
    for name, (t, names) in tasks.items():
        model.set_classes(names, tok); zero_shot[name] = evaluate(model, image_loader(*t["test"], batch_size=250))
    per_epoch = max(1, len(h.losses) // max(1, round(a.epochs)))
    losses = [round(sum(c) / len(c), 5) for c in (h.losses[i:i + per_epoch] for i in range(0, len(h.losses), per_epoch))]
    save_digit_clip(model, a.out, digits=list(range(5)), epochs=a.epochs, steps=len(h.losses), epoch_losses=losses, zero_shot=zero_shot,
                    seconds=round(seconds, 1), provenance=provenance())
    print(f"{len(h.losses)} steps in {seconds:.0f} s: last epoch's loss {losses[-1]:.3f}; zero-shot {zero_shot}")
