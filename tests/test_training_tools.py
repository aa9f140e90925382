"""The training tools users already have: `transformers.Trainer` checkpoints hold the adapter only and resume exactly;
activation checkpointing (`gradient_checkpointing_enable`) trains every method."""
import json
import pytest, torch
from transformers import TrainingArguments
from peft_notes.core import PeftModel, get_peft_model, list_methods
from peft_notes.models import tiny_bert, tiny_llama
from peft_notes.reparam import LoraConfig
from peft_notes.train import AdapterTrainer

def _rows(n=32):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(1, 99, (12,), generator=g), "attention_mask": torch.ones(12, dtype=torch.long),
             "labels": torch.tensor(i % 2)} for i in range(n)]

def _trainer(out, max_steps=6, **kw):
    torch.manual_seed(0)
    pm = get_peft_model(tiny_bert(), LoraConfig(r=4, modules_to_save=["classifier"]))
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=8, max_steps=max_steps, learning_rate=1e-2,
                             save_strategy="steps", save_steps=3, logging_steps=1, report_to=[], disable_tqdm=True, use_cpu=True,
                             seed=0, data_seed=0, **kw)
    return AdapterTrainer(model=pm, args=args, train_dataset=_rows()), pm

def test_checkpoints_hold_the_adapter_only_and_resume_exactly(tmp_path):
    full, pm_full = _trainer(tmp_path / "full"); full.train()
    ckpt = tmp_path / "full" / "checkpoint-3"
    files = {p.name for p in ckpt.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= files
    assert not files & {"model.safetensors", "pytorch_model.bin"}, files
    assert json.loads((ckpt / "adapter_config.json").read_text())["method"] == "lora"
    resumed, pm_resumed = _trainer(tmp_path / "resumed")
    with torch.no_grad(): pm_resumed.adapter_state_dict()["base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.weight"].fill_(7.0)
    resumed.train(resume_from_checkpoint=str(ckpt))   # the adapter, optimizer, scheduler and RNG come back from step 3
    a, b = pm_full.adapter_state_dict(), pm_resumed.adapter_state_dict()
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    fresh, pm_fresh = _trainer(tmp_path / "restart", max_steps=3); fresh.train()   # same steps, but the optimizer restarts at 0:
    assert any(not torch.allclose(pm_fresh.adapter_state_dict()[k], pm_full.adapter_state_dict()[k], atol=1e-6) for k in a)

def test_save_model_writes_a_loadable_adapter(tmp_path):
    trainer, pm = _trainer(tmp_path / "run", max_steps=2); trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    assert {p.name for p in (tmp_path / "final").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    back = PeftModel.from_pretrained(tiny_bert(), tmp_path / "final")
    x = _rows(2)[0]["input_ids"][None]
    with torch.no_grad(): assert torch.equal(back(x).logits, pm.eval()(x).logits)

METHODS = ["lora", "dora", "adalora", "dylora", "sora", "vera", "loha", "lokr", "ia3", "bitfit", "prompt_tuning"]

@pytest.mark.parametrize("reentrant", [True, False])
@pytest.mark.parametrize("method", METHODS)
def test_gradient_checkpointing_trains_every_method(method, reentrant):
    "Same loss and gradients with activation checkpointing as without, and every adapter tensor gets one."
    make = tiny_bert if method == "bitfit" else tiny_llama   # LLaMA has no bias for BitFit
    x = torch.randint(0, 99, (2, 10), generator=torch.Generator().manual_seed(0))
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        pm = get_peft_model(make(), list_methods()[method]()).train()
        with torch.no_grad():   # off the init, so every tensor has a gradient
            for p in pm.parameters():
                if p.requires_grad: p.add_(torch.randn_like(p) * 0.05)
        if ckpt: pm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        out = pm(x, labels=x if make is tiny_llama else torch.tensor([0, 1]))
        out.loss.backward()
        grads.append((out.loss.item(), {n: p.grad for n, p in pm.named_parameters() if p.requires_grad}))
    (l0, g0), (l1, g1) = grads
    assert abs(l0 - l1) < 1e-5 and g1.keys() == g0.keys() and g0
    missing = [n for n, g in g1.items() if g is None]
    assert not missing, f"no gradient with checkpointing: {missing[:3]}"
    for n in g0: torch.testing.assert_close(g1[n], g0[n], atol=1e-5, rtol=1e-4)


def test_prefix_tuning_refuses_activation_checkpointing_in_training():
    "The prefix is a KV cache that checkpointing's recomputation would append to twice (PEFT refuses it too)."
    pm = get_peft_model(tiny_llama(), list_methods()["prefix_tuning"](num_virtual_tokens=3)).train()
    pm.gradient_checkpointing_enable()
    x = torch.randint(0, 99, (2, 6))
    with pytest.raises(ValueError, match="activation checkpointing"): pm(x, labels=x)
    with torch.no_grad(): assert pm.eval()(x).logits.shape == (2, 6, 99)   # inference recomputes nothing: allowed
