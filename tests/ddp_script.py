"""Run by tests/test_multiprocess.py under torchrun: train LoRA on a tiny BERT with `fit`, save the adapter from rank 0.

Dropout is off: each process draws its own dropout masks, which no tolerance could absorb."""
import sys, torch
from torch.utils.data import DataLoader
from peft_notes.core import get_peft_model
from peft_notes.models import tiny_bert
from peft_notes.reparam import LoraConfig
from peft_notes.train import fit

torch.set_num_threads(1)
out, per_process_batch = sys.argv[1], int(sys.argv[2])
g = torch.Generator().manual_seed(0)
ids, labels = torch.randint(0, 99, (64, 12), generator=g), torch.randint(0, 2, (64,), generator=g)
rows = [{"input_ids": i, "labels": l} for i, l in zip(ids, labels)]
collate = lambda b: {"input_ids": torch.stack([x["input_ids"] for x in b]), "labels": torch.stack([x["labels"] for x in b])}
dl = DataLoader(rows, batch_size=per_process_batch, shuffle=False, collate_fn=collate)
pm = get_peft_model(tiny_bert(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), LoraConfig(r=4, alpha=8, modules_to_save=["classifier"]))
fit(pm, dl, epochs=2, lr=1e-2, progress=False)
if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0: sys.exit(0)
pm.save_adapter(out)
