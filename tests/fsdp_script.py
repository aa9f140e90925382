"""Run by tests/test_multiprocess.py: LoRA on a tiny LLaMA, trained by a plain loop for a few steps, either in one process
or sharded with FSDP2 (`torch.distributed.fsdp.fully_shard`, each decoder layer and the whole model) over the processes
torchrun starts (gloo on CPU); every process takes its share of the same global batch. Rank 0 saves the gathered adapter.
With `qlora`, the model is QLoRA's over a quantized base whose packed codes are made bfloat16 parameters
(`codes_as_parameters`), so FSDP shards them too; rank 0 records the code bytes it holds.

    python fsdp_script.py OUT {single,fsdp} [lora|qlora]"""
import os, sys, torch
import torch.distributed as dist
from safetensors.torch import save_file
from peft_notes.core import get_peft_model
from peft_notes.models import tiny_llama
from peft_notes.reparam import LoraConfig

torch.set_num_threads(1)
out, mode = sys.argv[1], sys.argv[2]
method = sys.argv[3] if len(sys.argv) > 3 else "lora"
if mode == "fsdp":
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    dist.init_process_group("gloo"); rank, world = dist.get_rank(), dist.get_world_size()
else: rank, world = 0, 1
torch.manual_seed(0)
if method == "qlora":
    from peft_notes.methods.quantized.qlora import QLoraConfig, codes_as_parameters
    pm = codes_as_parameters(get_peft_model(tiny_llama(), QLoraConfig(r=4, alpha=8, init_lora_weights=False)), torch.bfloat16)
else: pm = get_peft_model(tiny_llama(), LoraConfig(r=4, alpha=8, init_lora_weights=False))   # B != 0: every LoRA tensor gets a gradient from step 1
local = lambda t: t.to_local() if hasattr(t, "to_local") else t
code_bytes = lambda: sum(local(p).numel() * p.element_size() for n, p in pm.named_parameters() if n.endswith(".codes"))
codes_full = code_bytes()
if mode == "fsdp":
    mesh = init_device_mesh("cpu", (world,))
    for layer in pm.base_model.model.layers: fully_shard(layer, mesh=mesh)   # frozen base weights and trained LoRA tensors in one unit
    fully_shard(pm, mesh=mesh)
codes_held = code_bytes()
init = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in pm.adapter_state_dict().items()}
opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
ids = torch.randint(3, 99, (8, 12), generator=torch.Generator().manual_seed(0))   # the global batch: 8 rows
mine = ids[rank::world]                                                            # this process's rows
pm.train()
for _ in range(4):
    opt.zero_grad(); pm(input_ids=mine, labels=mine).loss.backward(); opt.step()   # FSDP averages the gradients over processes
state = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().contiguous().clone() for k, v in pm.adapter_state_dict().items()}
sharded = sum(hasattr(v, "full_tensor") for v in pm.adapter_state_dict().values())
moved = max((state[k] - init[k]).abs().max().item() for k in state)
if rank == 0: save_file(state, out, metadata={"sharded": str(sharded), "world": str(world), "moved": str(moved),
                                                  "codes_full": str(codes_full), "codes_held": str(codes_held)})
if mode == "fsdp":   # every rank past the save, then out without tearing gloo down: its threads have aborted the exit under load
    dist.barrier(); sys.stdout.flush(); sys.stderr.flush(); os._exit(0)
