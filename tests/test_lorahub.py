"""Chapter *LoraHub*: the composition's bad input (each refused with nothing added), the search with its other sampler,
and a composed adapter in Hugging Face PEFT as the plain LoRA it is."""
import pytest, torch
peft = pytest.importorskip("peft")  # dev extra; `make test` installs it, so this never skips there
from peft_notes.core import get_peft_model, list_methods
from peft_notes.interop import to_hf_peft
from peft_notes.models import tiny_llama
from peft_notes.methods.reparameterized.lora import LoraConfig
from peft_notes.methods.multitask.lorahub import lorahub_compose, lorahub_search

IDS = torch.randint(3, 99, (3, 8), generator=torch.Generator().manual_seed(0))

def pool():
    pm = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), "a")
    pm.add_adapter("b", LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n: p.copy_(torch.randn_like(p) * 0.5)
    return pm

def test_composition_bad_input():
    pm = pool()
    pm.add_adapter("r8", LoraConfig(r=8, target_modules=["q_proj", "v_proj"])); pm.add_adapter("k", LoraConfig(r=4, target_modules=["k_proj", "v_proj"]))
    pm.add_adapter("ia3", list_methods()["ia3"]())
    before = set(pm.peft_config)
    for names, w, msg in [(["a", "r8"], [1, 1], "one rank"), (["a", "k"], [1, 1], "same modules"), (["a", "ia3"], [1, 1], "is 'ia3'"),
                          (["a", "nope"], [1, 1], "no adapter 'nope'"), (["a", "b"], [1], "1 weights for 2 LoRAs")]:
        with pytest.raises(ValueError, match=msg): lorahub_compose(pm, names, w)
        assert set(pm.peft_config) == before
    with pytest.raises(ValueError, match="one of the LoRAs composed"): lorahub_compose(pm, ["a", "b"], [1, 1], new_name="a")
    with pytest.raises(ValueError, match="at least one batch"): lorahub_search(pm, ["a", "b"], [])
    def broken(m, b): raise RuntimeError("the task's loss failed")
    with pytest.raises(RuntimeError, match="loss failed"): lorahub_search(pm, ["a", "b"], [{"input_ids": IDS}], loss_fn=broken)
    assert set(pm.peft_config) == before and pm.active_adapters == ["a"]   # a failed search adds nothing and leaves the active adapter

def test_search_random_sampler_and_peft(tmp_path):
    "The random sampler also searches within the box; the best composition is active, and PEFT reads it as a LoRA with the same outputs."
    pm = pool()
    lorahub_compose(pm, ["a", "b"], [0.8, -0.5], new_name="truth"); pm.set_adapter("truth")
    with torch.no_grad(): y = pm.eval()(input_ids=IDS).logits
    loss = lambda m, b: ((m(input_ids=b["input_ids"]).logits - y) ** 2).mean()
    r = lorahub_search(pm, ["a", "b"], [{"input_ids": IDS}], trials=25, sampler="random", loss_fn=loss, bound=1.0, l1=0.0)
    assert all(-1.0 <= w <= 1.0 for w in r.weights) and r.objective < r.start and len(r.history) == 25 and pm.active_adapter == "lorahub"
    to_hf_peft(pm, tmp_path)
    theirs = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path).eval()
    with torch.no_grad(): assert (theirs(input_ids=IDS).logits - pm(input_ids=IDS).logits).abs().max().item() <= 1e-5
