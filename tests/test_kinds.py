"""The core's kinds, each proven by a method: (IA)³ wraps a layer on its output or its input (Hugging Face PEFT as the oracle,
both ways); BitFit trains per-adapter deltas of the base's own tensors, which are never written."""
import pytest, torch
peft = pytest.importorskip("peft")  # dev extra; `make test` installs it, so this never skips there
from peft_notes.core import PeftModel, get_peft_model
from peft_notes.interop import from_hf_peft, to_hf_peft
from peft_notes.models import tiny_bert, tiny_gpt2, tiny_llama
from peft_notes.methods.additive.ia3 import IA3Config, IA3Layer
from peft_notes.methods.selective.bitfit import BitFitConfig

X = {"input_ids": torch.randint(0, 99, (3, 11), generator=torch.Generator().manual_seed(0))}

def _train(model, steps=5, lr=5e-2):
    "A few real optimizer steps, so that every vector moves off its init."
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        z = model(**X).logits
        loss = torch.nn.functional.cross_entropy(z.reshape(-1, z.shape[-1]), torch.zeros(z.shape[:-1], dtype=torch.long).reshape(-1))
        opt.zero_grad(); loss.backward(); opt.step()
    return model.eval()

IA3_CASES = {"bert-head": (tiny_bert, dict(modules_to_save=["classifier"])), "llama": (tiny_llama, {}), "gpt2-conv1d": (tiny_gpt2, {})}

def _their_vectors(pm):
    return {n: m.ia3_l["default"] for n, m in pm.named_modules() if hasattr(m, "ia3_l") and "default" in m.ia3_l}

@pytest.mark.parametrize("case", IA3_CASES)
def test_ia3_ours_loads_in_peft(case, tmp_path):
    make, kw = IA3_CASES[case]
    ours = _train(get_peft_model(make(), IA3Config(**kw)))
    to_hf_peft(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(make(), tmp_path).eval()
    vectors = _their_vectors(theirs)
    assert len(vectors) == len(ours.adapter_context().layers(IA3Layer)) >= 4    # every vector arrived, none left at 1
    assert all(not torch.all(v == 1) for v in vectors.values())
    with torch.no_grad(): torch.testing.assert_close(theirs(**X).logits, ours(**X).logits, atol=1e-5, rtol=0)

@pytest.mark.parametrize("case", IA3_CASES)
def test_peft_ia3_loads_here(case, tmp_path):
    make, kw = IA3_CASES[case]
    hf = dict(kw, fan_in_fan_out=True) if make is tiny_gpt2 else kw
    theirs = _train(peft.get_peft_model(make(), peft.IA3Config(**hf)))
    theirs.save_pretrained(tmp_path)
    ours = from_hf_peft(make(), tmp_path)
    layers = ours.adapter_context().layers(IA3Layer)
    assert len(layers) == len(_their_vectors(theirs)) and any(l.feedforward["default"] for _, l in layers)
    with torch.no_grad(): torch.testing.assert_close(ours(**X).logits, theirs(**X).logits, atol=1e-5, rtol=0)

def test_ia3_input_side_is_the_feedforward_and_merges_exactly():
    pm = _train(get_peft_model(tiny_llama(), IA3Config()))
    sides = {p.rsplit(".", 1)[1]: l.feedforward["default"] for p, l in pm.adapter_context().layers(IA3Layer)}
    assert sides == {"k_proj": False, "v_proj": False, "down_proj": True}
    with torch.no_grad():
        y = pm(**X).logits; pm.merge_adapter(); torch.testing.assert_close(pm(**X).logits, y, atol=1e-5, rtol=0); pm.unmerge_adapter()

def test_ia3_bad_feedforward_modules_is_a_clear_error():
    base = tiny_bert()
    with pytest.raises(ValueError, match="feedforward_modules=\\['nope'\\] matches none of the targets"):
        get_peft_model(base, IA3Config(target_modules=["key"], feedforward_modules=["nope"]))
    assert not any(isinstance(m, IA3Layer) for m in base.modules())

def test_ia3_safe_merge_refuses_a_zero_vector():
    pm = get_peft_model(tiny_bert(), IA3Config())
    with torch.no_grad(): pm.adapter_context().layers(IA3Layer)[0][1].ia3_l["default"].zero_()
    with pytest.raises(ValueError, match="zero or non-finite scale"): pm.merge_adapter(safe_merge=True)

# ---------------- BitFit: deltas on the base's own tensors ----------------
def _snapshot(model): return {k: v.clone() for k, v in model.state_dict().items()}

def test_bitfit_never_writes_the_base_and_unload_gives_it_back_bit_for_bit():
    base = tiny_bert(); before = _snapshot(base)
    pm = _train(get_peft_model(base, BitFitConfig()))
    pm.add_adapter("b", BitFitConfig()); pm.set_adapter("b"); _train(pm); pm.set_adapter("default")
    now = {k.replace(".base_layer", ""): v for k, v in pm.get_base_model().state_dict().items() if ".base_delta." not in k}
    assert now.keys() == before.keys() and all(torch.equal(now[k], before[k]) for k in before)
    with torch.no_grad():
        y = pm(**X).logits
        with pm.disable_adapter(): assert torch.equal(pm(**X).logits, tiny_bert()(**X).logits)
        pm.delete_adapter("b"); assert torch.equal(pm(**X).logits, y)        # the other adapter's deltas were its own
    plain = pm.unload()
    assert _snapshot(plain).keys() == before.keys() and all(torch.equal(v, before[k]) for k, v in _snapshot(plain).items())

def test_bitfit_merge_folds_the_delta_into_the_bias(tmp_path):
    pm = _train(get_peft_model(tiny_gpt2(), BitFitConfig()))
    with torch.no_grad():
        y = pm(**X).logits
        merged = pm.merge_and_unload()
        torch.testing.assert_close(merged(**X).logits, y, atol=1e-5, rtol=0)
        assert not torch.equal(merged.transformer.h[0].attn.c_attn.bias, tiny_gpt2().transformer.h[0].attn.c_attn.bias)

def test_bitfit_save_load_is_exact(tmp_path):
    pm = _train(get_peft_model(tiny_bert(), BitFitConfig(biases="query_ffn")))
    pm.save_adapter(tmp_path)
    back = PeftModel.from_pretrained(tiny_bert(), tmp_path)
    with torch.no_grad(): assert torch.equal(back(**X).logits, pm(**X).logits)
    assert back.trainable_report().adapter_bytes == pm.trainable_report().adapter_bytes == 4 * 2 * (32 + 37)

def test_bitfit_where_there_is_no_bias_says_so():
    with pytest.raises(ValueError, match="owns a bias"): get_peft_model(tiny_llama(), BitFitConfig())
    with pytest.raises(ValueError, match="owns a bias"): get_peft_model(tiny_bert(), BitFitConfig(target_modules=["word_embeddings"]))
