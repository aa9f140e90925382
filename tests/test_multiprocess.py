"""Several processes on CPU (gloo) reach the same adapter as one: DDP through `fit` under torchrun and under `accelerate
launch`, and FSDP2 (`fully_shard`) sharding a LoRA model under torchrun. The README claims these three, tested here."""
import subprocess, sys
from pathlib import Path
from safetensors import safe_open
from peft_notes.core import read_safetensors

HERE = Path(__file__).parent
SCRIPT, FSDP = HERE / "ddp_script.py", HERE / "fsdp_script.py"

def _launch(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

def _torchrun(nproc, port, *args): _launch([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port), *map(str, args)])

def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)

def _ddp(out, nproc=None, batch=16, accelerate=False):
    if accelerate:   # accelerate's multi-process launcher (it starts torchrun; fit's Accelerator(cpu=True) joins a gloo group)
        _launch([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                 "--dynamo_backend", "no", "--main_process_port", "29531", str(SCRIPT), str(out), str(batch)])
    else: _torchrun(nproc, 29500 + nproc, SCRIPT, out, batch)
    return read_safetensors(Path(out) / "adapter_model.safetensors")

def test_two_processes_match_one(tmp_path):
    one = _ddp(tmp_path / "one", 1, 16)     # global batch 16 in one process
    two = _ddp(tmp_path / "two", 2, 8)      # 8 per process x 2 processes, gradients averaged by DDP
    assert _max_diff(one, two) < 1e-5
    assert any(v.abs().max() > 0 for k, v in one.items() if "lora_B" in k)   # it trained
    acc = _ddp(tmp_path / "acc", batch=8, accelerate=True)   # the same two processes, started by `accelerate launch`
    assert _max_diff(one, acc) < 1e-5

def test_fsdp2_sharded_lora_matches_one_process(tmp_path):
    _launch([sys.executable, str(FSDP), str(tmp_path / "one.safetensors"), "single"])
    _torchrun(2, 29541, FSDP, tmp_path / "two.safetensors", "fsdp")
    one, two = (read_safetensors(tmp_path / f) for f in ("one.safetensors", "two.safetensors"))
    with safe_open(str(tmp_path / "two.safetensors"), framework="pt") as f: meta = f.metadata()
    assert meta["world"] == "2" and int(meta["sharded"]) == len(two) > 0      # every adapter tensor was a sharded DTensor
    with safe_open(str(tmp_path / "one.safetensors"), framework="pt") as f: assert float(f.metadata()["moved"]) > 1e-3   # it trained
    assert _max_diff(one, two) < 1e-5

def test_fsdp2_sharded_qlora_matches_one_process(tmp_path):
    """QLoRA under FSDP2 on two processes, its quantized base sharded (the packed codes made bfloat16 parameters by `codes_as_parameters`, as
    bitsandbytes' quant_storage does for Answer.AI's FSDP-QLoRA): each process holds half of the codes, and the trained adapter equals one process's."""
    _launch([sys.executable, str(FSDP), str(tmp_path / "one.safetensors"), "single", "qlora"])
    _torchrun(2, 29543, FSDP, tmp_path / "two.safetensors", "fsdp", "qlora")
    one, two = (read_safetensors(tmp_path / f) for f in ("one.safetensors", "two.safetensors"))
    with safe_open(str(tmp_path / "two.safetensors"), framework="pt") as f: meta = f.metadata()
    assert meta["world"] == "2" and int(meta["sharded"]) == len(two) > 0
    assert int(meta["codes_full"]) > 0 and int(meta["codes_held"]) == int(meta["codes_full"]) // 2      # the base's codes are split between the processes
    with safe_open(str(tmp_path / "one.safetensors"), framework="pt") as f: assert float(f.metadata()["moved"]) > 1e-3
    assert _max_diff(one, two) < 1e-5
