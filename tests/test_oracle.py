"""Hugging Face PEFT as the oracle (a test-time dependency only): same logits both ways."""
import pytest, torch
peft = pytest.importorskip("peft")  # dev extra; `make test` installs it, so this never skips there
from peft_notes.core import get_peft_model
from peft_notes.interop import from_hf_peft, to_hf_peft
from peft_notes.models import load_minilm, tiny_bert, tiny_gpt2, tiny_llama
from peft_notes.reparam import LoraConfig

def _train(model, x, steps=5, lr=1e-2):
    "A few real optimizer steps so that B is not zero."
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        z = model(**x).logits
        loss = torch.nn.functional.cross_entropy(z.reshape(-1, z.shape[-1]), torch.zeros(z.shape[:-1], dtype=torch.long).reshape(-1))
        opt.zero_grad(); loss.backward(); opt.step()
    return model.eval()

def _inputs(tok=None):
    if tok is None: return {"input_ids": torch.randint(0, 99, (3, 11), generator=torch.Generator().manual_seed(0))}
    return dict(tok(["Shares in the bank fell.", "The striker scored twice in the final.", "A new phone was launched."], return_tensors="pt", padding=True))

CASES = {
    "minilm": (lambda: load_minilm(5)[0], dict(r=8, alpha=16, target_modules=["query", "value"], modules_to_save=["classifier"])),
    "llama-all-linear": (tiny_llama, dict(r=4, alpha=8, target_modules="all-linear")),
    "gpt2-conv1d-rslora": (tiny_gpt2, dict(r=4, alpha=8, use_rslora=True)),
    "bert-bias-all": (tiny_bert, dict(r=2, alpha=4, bias="all", modules_to_save=["classifier"])),
}
HF_KW = {"alpha": "lora_alpha", "dropout": "lora_dropout"}

@pytest.mark.parametrize("case", CASES)
def test_ours_loads_in_peft(case, tmp_path):
    make, kw = CASES[case]
    x = _inputs(load_minilm(5)[1] if case == "minilm" else None)
    ours = _train(get_peft_model(make(), LoraConfig(**kw)), x)
    to_hf_peft(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(make(), tmp_path).eval()
    with torch.no_grad(): a, b = ours(**x).logits, theirs(**x).logits
    assert not torch.allclose(a, make()(**x).logits.detach())  # the adapter does something
    torch.testing.assert_close(b, a, atol=1e-5, rtol=0)

@pytest.mark.parametrize("case", CASES)
def test_peft_loads_here(case, tmp_path):
    make, kw = CASES[case]
    x = _inputs(load_minilm(5)[1] if case == "minilm" else None)
    hf_kw = {HF_KW.get(k, k): v for k, v in kw.items()}
    if isinstance(make(), type(tiny_gpt2())): hf_kw["fan_in_fan_out"] = True
    theirs = _train(peft.get_peft_model(make(), peft.LoraConfig(**hf_kw)), x)
    theirs.save_pretrained(tmp_path)
    ours = from_hf_peft(make(), tmp_path)
    with torch.no_grad(): torch.testing.assert_close(ours(**x).logits, theirs(**x).logits, atol=1e-5, rtol=0)
    assert not any(p.requires_grad for p in ours.parameters())

def test_peft_seq_cls_task_type_brings_its_head(tmp_path):
    x = _inputs()
    theirs = _train(peft.get_peft_model(tiny_bert(), peft.LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"])), x)
    theirs.save_pretrained(tmp_path)
    ours = from_hf_peft(tiny_bert(), tmp_path)
    assert ours.peft_config["default"].modules_to_save == ["classifier"]
    with torch.no_grad(): torch.testing.assert_close(ours(**x).logits, theirs(**x).logits, atol=1e-5, rtol=0)

def test_peft_options_we_do_not_implement_are_refused(tmp_path):
    theirs = peft.get_peft_model(tiny_bert(), peft.LoraConfig(r=2, target_modules=["query"], use_dora=True))
    theirs.save_pretrained(tmp_path)
    base = tiny_bert()
    with pytest.raises(ValueError, match="use_dora"): from_hf_peft(base, tmp_path)
