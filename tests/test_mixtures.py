"""Chapter *Mixtures of adapters*: AdaMix's module sharing and merging, MOELoRA's tasks through the model call (the
core's `call_keywords`), a task's MOELoRA update loading in Hugging Face PEFT as the LoRA it is, and bad input."""
import pytest, torch
peft = pytest.importorskip("peft")  # dev extra; `make test` installs it, so this never skips there
from peft_notes.core import PeftModel, get_peft_model
from peft_notes.interop import to_hf_peft
from peft_notes.models import tiny_bert, tiny_gpt2, tiny_llama
from peft_notes.testing import default_inputs
from peft_notes.methods.multitask.mixtures import (AdaMixConfig, MixtureBottleneck, MoELoraConfig, adamix_loss, adamix_merge, adamix_params,
                                                   moelora_task_lora)

IDS = torch.randint(3, 99, (4, 7), generator=torch.Generator().manual_seed(0))
TASKS = torch.tensor([1, 0, 2, 1])

def _train_moe(pm, steps=6):
    opt = torch.optim.Adam([p for p in pm.parameters() if p.requires_grad], lr=2e-2); pm.train()
    for _ in range(steps):
        loss = pm(input_ids=IDS, labels=IDS, task_ids=TASKS).loss; opt.zero_grad(); loss.backward(); opt.step()
    return pm.eval()

@pytest.mark.parametrize("share", [None, "up", "down"])
def test_adamix_sharing_counts_and_merges(share):
    pm = get_peft_model(tiny_llama(), AdaMixConfig(bottleneck=4, experts=3, share=share))
    mods = [l.adapter["default"] for _, l in pm.adapter_context().layers()]
    assert all(isinstance(m, MixtureBottleneck) for m in mods)
    assert pm.trainable_report().trainable == len(mods) * adamix_params(32, 4, 3, share)
    opt = torch.optim.Adam([p for p in pm.parameters() if p.requires_grad], lr=1e-2); pm.train()
    for _ in range(4):
        loss = adamix_loss(pm, {"input_ids": IDS, "labels": IDS}); opt.zero_grad(); loss.backward(); opt.step()
    pm.eval()
    with torch.no_grad():
        y = pm(input_ids=IDS).logits
        adamix_merge(pm, new_name="one"); pm.set_adapter("one")
        assert (pm(input_ids=IDS).logits - y).abs().max().item() <= 1e-5
        with pm.disable_adapter(): assert (pm(input_ids=IDS).logits - y).abs().max().item() > 1e-4   # it trained

def test_adamix_route_is_one_pair():
    "A forced route (i, j) is that pair's adapter: the up-projection j after the down-projection i."
    m = MixtureBottleneck(8, 3, 4)
    for p in m.ups: torch.nn.init.normal_(p.weight)
    h = torch.randn(2, 8); m.route = (2, 1)
    assert torch.allclose(m(h), m.ups[1](m.act(m.downs[2](h))))

def test_adamix_save_load(tmp_path):
    "AdaMix saved and loaded gives the averaged outputs (the modules and the head)."
    pm = get_peft_model(tiny_bert(), AdaMixConfig(bottleneck=4, modules_to_save=["classifier"]))
    x = default_inputs(pm)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if p.requires_grad: p.add_(torch.randn_like(p) * 0.1)
        y = pm.eval()(**x).logits
    pm.save_adapter(tmp_path / "a")
    back = PeftModel.from_pretrained(tiny_bert(), tmp_path / "a")
    with torch.no_grad(): assert (back(**x).logits - y).abs().max().item() <= 1e-6

def test_moelora_task_as_peft_lora(tmp_path):
    "Each task's MOELoRA update, written as a plain LoRA, loads in Hugging Face PEFT with that task's outputs."
    pm = _train_moe(get_peft_model(tiny_llama(), MoELoraConfig(r=4, experts=2, num_tasks=3, task_dim=8)))
    for t in range(3):
        name = moelora_task_lora(pm, t, adapter_name="default")
        to_hf_peft(pm, tmp_path / name, adapter_name=name)
        theirs = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path / name).eval()
        pm.set_adapter("default")
        with torch.no_grad(): assert (theirs(input_ids=IDS).logits - pm(input_ids=IDS, task_ids=t).logits).abs().max().item() <= 1e-5

@pytest.mark.parametrize("make", [tiny_gpt2, tiny_bert], ids=["gpt2", "bert"])
def test_moelora_mixed_tasks_other_architectures(make):
    "GPT-2's Conv1D (weights stored transposed) and BERT: a batch of tasks equals each task's rows alone (merging a one-task adapter: the shared matrix)."
    base = make(); x = default_inputs(base); n = len(x["input_ids"]); t = torch.arange(n) % 2
    pm = get_peft_model(base, MoELoraConfig(r=4, experts=2, num_tasks=2, task_dim=8))
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad: p.add_(torch.randn_like(p) * 0.1)
        y = pm(**x, task_ids=t).logits
        for k in (0, 1):
            rows = (t == k).nonzero()[:, 0]
            sub = {a: v[rows] for a, v in x.items()}
            assert (pm(**sub, task_ids=k).logits - y[rows]).abs().max().item() <= 1e-5

def test_moelora_bad_input():
    pm = get_peft_model(tiny_llama(), MoELoraConfig(r=4, experts=2, num_tasks=2, task_dim=8))
    with pytest.raises(ValueError, match="call the model with task_ids="): pm(input_ids=IDS)
    with pytest.raises(ValueError, match=r"task_ids must be in 0..1"): pm(input_ids=IDS, task_ids=torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="does not split into 3 experts"): MoELoraConfig(r=4, experts=3)
    with pytest.raises(ValueError, match="task=5"): moelora_task_lora(pm, 5)
    with pytest.raises(ValueError, match="not adamix"): adamix_merge(pm)
    assert set(pm.peft_config) == {"default"}
    assert pm.adapter_shared["default"].task_ids is None   # a failed call leaves no task ids behind
    with pytest.raises(TypeError, match="moelora_task_lora"): pm.merge_adapter()
