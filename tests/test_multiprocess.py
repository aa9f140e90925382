"""Two processes (torchrun, gloo on CPU) with the same global batch reach the same adapter as one process."""
import subprocess, sys
from pathlib import Path
import torch
from peft_notes.core import read_safetensors

SCRIPT = Path(__file__).with_name("ddp_script.py")

def _run(nproc, batch, out):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(29500 + nproc), str(SCRIPT), str(out), str(batch)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return read_safetensors(Path(out) / "adapter_model.safetensors")

def test_two_processes_match_one(tmp_path):
    one = _run(1, 16, tmp_path / "one")     # global batch 16 in one process
    two = _run(2, 8, tmp_path / "two")      # 8 per process x 2 processes, gradients averaged by DDP
    assert one.keys() == two.keys()
    err = max((one[k] - two[k]).abs().max().item() for k in one)
    assert err < 1e-5, f"max difference {err:.2e}"
    assert any(v.abs().max() > 0 for k, v in one.items() if "lora_B" in k)   # it trained
