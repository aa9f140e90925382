"""What the three search benches share (`autopeft_search.py`, `s4_search.py`, `noah_search.py`): their data and their trial.

A search scores many designs, so each design trains on a slice of the task's *training* sentences and is scored on
another slice of them (the low-fidelity proxy AutoPEFT's paper also uses): the dev set is left for the family's table,
where the design found is retrained at full budget. `search_data` makes the two slices; `train_design` trains one
design from a fresh MiniLM with the harness's loop and reports its accuracy and its parameters without the new head
(which trains in full in every design and so is not the design's cost).
"""
import time
from dataclasses import dataclass

@dataclass
class SearchData:
    enc: object          # DatasetDict(train=, test=) tokenized: the search's training slice and its scoring slice
    tok: object          # MiniLM's tokenizer
    n_labels: int

def search_data(task:str, n_train:int, n_valid:int, *, seed:int=0, max_length:int=64)->SearchData:
    "Two disjoint slices of `task`'s training split (shuffled with `seed`): `n_train` to train on, the next `n_valid` to score with."
    from datasets import DatasetDict
    from datasets.utils.logging import disable_progress_bar
    from peft_notes.data import tokenize
    from peft_notes.models import load_minilm
    from peft_notes.train import load_task
    disable_progress_bar()
    ds, col, n = load_task(task)
    pool = ds["train"].shuffle(seed=seed)
    train, valid = pool.select(range(n_train)), pool.select(range(n_train, n_train + n_valid))
    _, tok = load_minilm(num_labels=n, seed=seed)
    return SearchData(tokenize(DatasetDict(train=train, test=valid), tok, text_column=col, max_length=max_length), tok, n)

def head_params(pm, head:str="classifier")->int:
    "The trainable parameters of the new head (trained in full in every design, so not counted as the design's)."
    return sum(p.numel() for nm, p in pm.named_parameters() if p.requires_grad and head in nm)

def train_design(cfg, data:SearchData, *, epochs:float, lr:float, seed:int=0)->dict:
    "Train `cfg` on a fresh MiniLM (seeded) over the training slice, score it on the other: {'accuracy', 'params' (head aside), 'seconds'}."
    import torch
    from peft_notes.core import get_peft_model
    from peft_notes.models import load_minilm
    from peft_notes.train import fit, make_loader
    model, _ = load_minilm(num_labels=data.n_labels, seed=seed)
    torch.manual_seed(seed); pm = get_peft_model(model, cfg)
    t0 = time.perf_counter()
    h = fit(pm, make_loader(data.enc["train"], data.tok, 32, shuffle=True, seed=seed), make_loader(data.enc["test"], data.tok, 128),
            epochs=epochs, lr=lr, seed=seed, progress=False)
    return {"accuracy": h.final_accuracy, "params": pm.trainable_report().trainable - head_params(pm), "seconds": time.perf_counter() - t0}
