"""Pretrain the vision chapters' small ViT on MNIST's digits 0-4 and store it in nbs/assets/digit_vit/ (~2 min on 2 cores).

    python bench/digit_vit.py [--epochs 60] [--out nbs/assets/digit_vit]

The chapters (nbs/70_vision.ipynb and after) load the stored model; the vision chapter's slow cell repeats this run.
"""
import argparse, time
import torch
from peft_notes.train import evaluate, provenance
from peft_notes.vision import image_loader, mnist_images, pretrain_digit_vit, save_digit_vit, split_classes

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=float, default=60)
    ap.add_argument("--out", default="nbs/assets/digit_vit")
    a = ap.parse_args()
    task = split_classes(*mnist_images(), range(5))
    t0 = time.perf_counter()
    model, h = pretrain_digit_vit(task, epochs=a.epochs)
    seconds = time.perf_counter() - t0
    acc = evaluate(model, image_loader(*task["test"], batch_size=250))
    per_epoch = max(1, len(h.losses) // max(1, round(a.epochs)))
    losses = [round(sum(c) / len(c), 5) for c in (h.losses[i:i + per_epoch] for i in range(0, len(h.losses), per_epoch))]
    save_digit_vit(model, a.out, digits=list(range(5)), epochs=a.epochs, steps=len(h.losses), epoch_losses=losses, test_accuracy=acc,
                   seconds=round(seconds, 1), provenance=provenance())
    print(f"{len(h.losses)} steps in {seconds:.0f} s: last epoch's loss {losses[-1]:.3f}, test accuracy on 0-4 {acc:.3f}")
