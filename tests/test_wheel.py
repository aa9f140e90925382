"""Installed as a user installs it: a wheel built from the repository, in a clean virtual environment with only its
runtime requirements, runs LoRA on a tiny model; with the `examples` extra, the command line's demo answers."""
import re, subprocess, sys, venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def run(*cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=1200, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r

LORA_ON_A_TINY_MODEL = """
import torch, transformers as T
from peft_notes.core import get_peft_model, list_methods
from peft_notes.reparam import LoraConfig
torch.manual_seed(0)
m = T.LlamaForCausalLM(T.LlamaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37))
pm = get_peft_model(m, LoraConfig(r=2))
x = torch.randint(0, 99, (4, 12))
opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
losses = []
for _ in range(20):
    loss = pm(x, labels=x).loss; opt.zero_grad(); loss.backward(); opt.step(); losses.append(loss.item())
assert losses[-1] < losses[0], losses
print("methods", len(list_methods()), "loss", round(losses[0], 3), "->", round(losses[-1], 3))
"""

def test_wheel_installs_into_a_clean_environment(tmp_path):
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "pip", "wheel", ROOT, "--no-deps", "--no-build-isolation", "-q", "-w", dist)
    wheel = next(dist.glob("peft_notes-*.whl"))
    env = tmp_path / "env"; venv.create(env, with_pip=True)
    py = env / "bin" / "python"
    run(py, "-m", "pip", "install", "-q", "torch==2.13.0")   # the CPU wheel first, as the README says
    run(py, "-m", "pip", "install", "-q", wheel)
    have = run(py, "-m", "pip", "list", "--format=freeze").stdout.lower()
    assert re.search(r"^peft[-_]notes==", have, re.M) and not re.search(r"^(peft|nbdev|pytest)==", have, re.M)   # runtime requirements only: no test oracle, no notebook tools
    r = run(py, "-c", LORA_ON_A_TINY_MODEL, cwd=tmp_path)   # outside the repository: the installed package, not the source tree
    assert r.stdout.startswith("methods ") and int(r.stdout.split()[1]) >= 12
    run(py, "-m", "pip", "install", "-q", f"{wheel}[examples]")
    r = run(env / "bin" / "peft-notes", "demo", "--help", cwd=tmp_path)
    assert "usage: peft-notes demo" in r.stdout
