"""Pretrain the foundations chapter's character-level LLaMA and store it in nbs/assets/char_llama/ (~6 min on 2 cores).

    python bench/char_llama.py [--steps 800] [--out nbs/assets/char_llama]

The chapter (nbs/05_foundations.ipynb) loads the stored model; its slow cell repeats this run and checks the loss.
"""
import argparse, math, time
import torch
from transformers import LlamaForCausalLM
from peft_notes.data import load_bbc
from peft_notes.foundations import CharTokenizer, char_llama_config, lm_loss, pretrain, save_char_llama
from peft_notes.train import provenance

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--out", default="nbs/assets/char_llama")
    a = ap.parse_args()
    bbc = load_bbc()
    train_text, test_text = "\n\n".join(bbc["train"]["text"]), "\n\n".join(bbc["test"]["text"])
    tok = CharTokenizer.from_text(train_text)
    torch.manual_seed(0); model = LlamaForCausalLM(char_llama_config(len(tok)))   # a seeded init; pretrain seeds its batches
    t0 = time.perf_counter()
    losses = pretrain(model, torch.tensor(tok.encode(train_text)), steps=a.steps)
    seconds = time.perf_counter() - t0
    test = lm_loss(model, torch.tensor(tok.encode(test_text)))
    save_char_llama(model, tok, a.out, losses=[round(l, 5) for l in losses], test_loss=test, steps=a.steps, seconds=round(seconds, 1),
                    provenance=provenance())
    print(f"{a.steps} steps in {seconds:.0f} s: last training loss {losses[-1]:.3f}, held-out {test:.3f} nats/char ({test / math.log(2):.3f} bits)")
