"""LLM-Adapters' placement study at toy scale: serial adapter, parallel adapter and LoRA, each at the attention, the MLP or both.

    .venv/bin/python bench/placement_study.py --out results/placement_char_llama.json   # ~12 min on 2 cores

The model is the foundations chapter's character LLaMA (4 layers of width 128, pretrained here on BBC News, stored in
`nbs/assets/char_llama`). The task is an instruction built from the shipped corpus: a BBC headline (its first 40
characters), then `In capitals:`, and the response is the headline in capitals — the loss on the response only
(`response_only`). Training: 1,500 training-split headlines, `--steps` AdamW steps of 32 at one learning rate for
every placement. Scored on the test split's 445 headlines: the response's characters predicted right with the
true prefix given (teacher-forced), and greedy answers equal to the target. The file is rewritten after each run.
"""
import argparse, json, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300); ap.add_argument("--lr", type=float, default=3e-3); ap.add_argument("--train", type=int, default=1500)
    ap.add_argument("--bottleneck", type=int, default=32); ap.add_argument("--r", type=int, default=8); ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default=None, help="method:where,... to run a subset, e.g. LoRA:attention"); ap.add_argument("--out", default="results/placement_char_llama.json")
    a = ap.parse_args(argv)
    import torch
    from peft_notes.core import get_peft_model
    from peft_notes.data import load_bbc
    from peft_notes.foundations import load_char_llama, pad_rows
    from peft_notes.train import provenance
    from peft_notes.methods.hybrid.placement import capitals_task, score_capitals, placements
    bbc = load_bbc(); folder = ROOT / "nbs" / "assets" / "char_llama"
    lm, tok, _ = load_char_llama(folder)
    train, test = capitals_task(tok, bbc["train"]["text"][:a.train]), capitals_task(tok, bbc["test"]["text"])
    out = {"settings": vars(a), "provenance": provenance(methods=["pfeiffer", "parallel_adapter", "lora"]), "base": score_capitals(lm, tok, test), "runs": []}
    todo = placements(a.bottleneck, a.r)
    if a.only: todo = {k: v for k, v in todo.items() if f"{k[0]}:{k[1]}" in a.only.split(",")}
    for (method, where), cfg in todo.items():
        lm, _, _ = load_char_llama(folder); torch.manual_seed(a.seed)
        pm = get_peft_model(lm, cfg); opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=a.lr)
        g = torch.Generator().manual_seed(a.seed); pm.train(); t0, losses = time.perf_counter(), []
        for _ in range(a.steps):
            idx = torch.randint(0, len(train), (32,), generator=g).tolist()
            loss = pm(**pad_rows([train[i] for i in idx])).loss; loss.backward(); opt.step(); opt.zero_grad(); losses.append(loss.item())
        row = {"method": method, "where": where, "config": cfg.to_dict(), "trainable": pm.trainable_report().trainable,
               "seconds": time.perf_counter() - t0, "losses": losses[::10], **score_capitals(pm, tok, test)}
        out["runs"].append(row); Path(a.out).write_text(json.dumps(out, indent=1))
        print(f"{method:8s} {where:9s} {row['trainable']:7,d} chars {row['char_accuracy']:.3f} exact {row['exact']:.3f} {row['seconds']:.0f}s", flush=True)

if __name__ == "__main__": main()
