"""Hugging Face PEFT as the oracle (a test-time dependency only): same logits both ways."""
import pytest, torch
peft = pytest.importorskip("peft")  # dev extra; `make test` installs it, so this never skips there
from peft_notes.core import get_peft_model
from peft_notes.interop import from_hf_peft, to_hf_peft
from peft_notes.models import load_minilm, tiny_bert, tiny_gpt2, tiny_llama
from peft_notes.reparam import LoraConfig
from peft_notes.reparam import DoraConfig
from peft_notes.reparam import LohaConfig, LokrConfig, VeraConfig

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
    theirs = peft.get_peft_model(tiny_bert(), peft.LoraConfig(r=2, target_modules=["query", "value"], rank_pattern={"value": 4}))
    theirs.save_pretrained(tmp_path)
    base = tiny_bert()
    with pytest.raises(ValueError, match="rank_pattern"): from_hf_peft(base, tmp_path)
    assert not any("lora" in n for n, _ in base.named_modules())

# PiSSA / OLoRA: the base weight becomes a residual; PEFT gets the rank-2r LoRA of the update
RESIDUAL = {"pissa-bert": (tiny_bert, dict(r=4, alpha=8, init_lora_weights="pissa", target_modules="all-linear")),
            "pissa-gpt2-rslora": (tiny_gpt2, dict(r=4, alpha=8, init_lora_weights="pissa", use_rslora=True)),
            "olora-llama": (tiny_llama, dict(r=4, alpha=8, init_lora_weights="olora", target_modules="all-linear"))}

@pytest.mark.parametrize("case", RESIDUAL)
def test_residual_init_exports_as_plain_lora(case, tmp_path):
    make, kw = RESIDUAL[case]
    x = _inputs()
    ours = _train(get_peft_model(make(), LoraConfig(**kw)), x)
    to_hf_peft(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(make(), tmp_path).eval()   # the original base, not the residual
    assert theirs.peft_config["default"].r == 2 * kw["r"]
    with torch.no_grad(): torch.testing.assert_close(theirs(**x).logits, ours(**x).logits, atol=1e-5, rtol=0)

@pytest.mark.parametrize("how", ["pissa", "olora"])
def test_residual_init_equals_peft(how, tmp_path):
    "Same A, B and residual weight as PEFT's init; a PEFT-trained adapter, saved as is or converted, loads here."
    x = _inputs()
    theirs = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=how, target_modules=["q_proj", "v_proj"]))
    ours = get_peft_model(tiny_llama(), LoraConfig(r=4, alpha=8, init_lora_weights=how, target_modules=["q_proj", "v_proj"]))
    for (n, p), (n2, p2) in zip(sorted((k, v) for k, v in theirs.named_parameters() if "layers.0.self_attn.q_proj" in k),
                                sorted((k, v) for k, v in ours.named_parameters() if "layers.0.self_attn.q_proj" in k)):
        torch.testing.assert_close(p2, p, atol=1e-5, rtol=0, msg=lambda m: f"{n} vs {n2}: {m}")
    theirs.save_pretrained(tmp_path / "init")
    _train(theirs, x)
    theirs.save_pretrained(tmp_path / "as_is")                     # A, B only: valid on the base PiSSA modified
    theirs.save_pretrained(tmp_path / "lora", path_initial_model_for_weight_conversion=str(tmp_path / "init"))
    with torch.no_grad():
        want = theirs(**x).logits
        torch.testing.assert_close(from_hf_peft(tiny_llama(), tmp_path / "as_is")(**x).logits, want, atol=1e-5, rtol=0)
        lora = from_hf_peft(tiny_llama(), tmp_path / "lora")
        assert lora.peft_config["default"].r == 8 and lora.peft_config["default"].init_lora_weights is True
        torch.testing.assert_close(lora(**x).logits, want, atol=1e-5, rtol=0)

# DoRA: PEFT's LoraConfig(use_dora=True)
DORA = {"minilm": CASES["minilm"], "llama-all-linear": CASES["llama-all-linear"], "gpt2-conv1d": (tiny_gpt2, dict(r=4, alpha=8)),
        "bert-rslora-bias": (tiny_bert, dict(r=2, alpha=4, use_rslora=True, bias="lora_only"))}

@pytest.mark.parametrize("case", DORA)
def test_dora_both_ways(case, tmp_path):
    make, kw = DORA[case]
    x = _inputs(load_minilm(5)[1] if case == "minilm" else None)
    ours = _train(get_peft_model(make(), DoraConfig(**kw)), x)
    to_hf_peft(ours, tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(make(), tmp_path / "ours").eval()
    assert theirs.peft_config["default"].use_dora
    with torch.no_grad(): torch.testing.assert_close(theirs(**x).logits, ours(**x).logits, atol=1e-5, rtol=0)
    hf_kw = {HF_KW.get(k, k): v for k, v in kw.items()}
    if make is tiny_gpt2: hf_kw["fan_in_fan_out"] = True
    theirs = _train(peft.get_peft_model(make(), peft.LoraConfig(use_dora=True, **hf_kw)), x)
    theirs.save_pretrained(tmp_path / "theirs")
    back = from_hf_peft(make(), tmp_path / "theirs")
    assert back.peft_config["default"].method == "dora"
    with torch.no_grad(): torch.testing.assert_close(back(**x).logits, theirs(**x).logits, atol=1e-5, rtol=0)

def test_dora_training_step_equals_peft():
    "Same gradients as PEFT's DoRA (the norm detached in both), through our fused node."
    x = _inputs()
    ours = get_peft_model(tiny_llama(), DoraConfig(r=4, alpha=8, target_modules="all-linear", init_lora_weights=False))
    theirs = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", use_dora=True, init_lora_weights=False))
    pairs = []
    with torch.no_grad():
        for path, layer in ours.adapter_context().layers():
            t = theirs.base_model.model.get_submodule(path)
            for a, b in ((layer.lora_A["default"].weight, t.lora_A["default"].weight), (layer.lora_B["default"].weight, t.lora_B["default"].weight),
                         (layer.lora_magnitude_vector["default"], t.lora_magnitude_vector["default"].weight)):
                b.copy_(a); pairs.append((f"{path}: {tuple(a.shape)}", a, b))
    for m in (ours, theirs):
        m.train(); z = m(**x).logits; (z * torch.linspace(-1, 1, z.shape[-1])).sum().backward()
    assert len(pairs) == 3 * 14
    for n, a, b in pairs:  # equal to float32 rounding, relative to the gradient's own scale
        assert (a.grad - b.grad).abs().max() <= 1e-4 * b.grad.abs().max(), n

# VeRA, LoHa, LoKr: (base, our config, PEFT's config for the same adapter)
QV = ["query", "value"]
FAMILY = {
    "vera-minilm": (lambda: load_minilm(5)[0], lambda: VeraConfig(r=64, target_modules=QV, modules_to_save=["classifier"]),
                    lambda: peft.VeraConfig(r=64, target_modules=QV, modules_to_save=["classifier"])),
    "vera-llama-seed-only": (tiny_llama, lambda: VeraConfig(r=8, target_modules="all-linear", save_projection=False, projection_prng_key=7),
                             lambda: peft.VeraConfig(r=8, target_modules="all-linear", save_projection=False, projection_prng_key=7)),
    "vera-gpt2-conv1d": (tiny_gpt2, lambda: VeraConfig(r=8), lambda: peft.VeraConfig(r=8, target_modules=["c_attn"], fan_in_fan_out=True)),
    "loha-bert": (tiny_bert, lambda: LohaConfig(r=4, alpha=8, target_modules=QV), lambda: peft.LoHaConfig(r=4, alpha=8, target_modules=QV)),
    "loha-llama": (tiny_llama, lambda: LohaConfig(r=2, alpha=4, target_modules="all-linear"), lambda: peft.LoHaConfig(r=2, alpha=4, target_modules="all-linear")),
    "lokr-bert": (tiny_bert, lambda: LokrConfig(r=4, alpha=8, target_modules=QV), lambda: peft.LoKrConfig(r=4, alpha=8, target_modules=QV)),
    "lokr-llama": (tiny_llama, lambda: LokrConfig(r=2, alpha=4, target_modules="all-linear"), lambda: peft.LoKrConfig(r=2, alpha=4, target_modules="all-linear")),
    "lokr-minilm-decompose-both": (lambda: load_minilm(5)[0], lambda: LokrConfig(r=4, alpha=8, decompose_both=True, target_modules=QV),
                                   lambda: peft.LoKrConfig(r=4, alpha=8, decompose_both=True, target_modules=QV)),
}

@pytest.mark.parametrize("case", FAMILY)
def test_family_both_ways(case, tmp_path):
    make, ours_cfg, hf_cfg = FAMILY[case]
    x = _inputs(load_minilm(5)[1] if "minilm" in case else None)
    ours = _train(get_peft_model(make(), ours_cfg()), x)
    with torch.no_grad(): assert not torch.allclose(ours(**x).logits, make()(**x).logits)
    to_hf_peft(ours, tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(make(), tmp_path / "ours").eval()
    with torch.no_grad(): torch.testing.assert_close(theirs(**x).logits, ours(**x).logits, atol=1e-5, rtol=0)
    theirs = _train(peft.get_peft_model(make(), hf_cfg()), x)
    theirs.save_pretrained(tmp_path / "theirs")
    back = from_hf_peft(make(), tmp_path / "theirs")
    assert back.peft_config["default"].method == ours_cfg().method
    with torch.no_grad(): torch.testing.assert_close(back(**x).logits, theirs(**x).logits, atol=1e-5, rtol=0)

def test_vera_shared_pair_is_peft_s():
    "Drawn from the same seed, our shared pair is PEFT's bit for bit (what save_projection=False relies on)."
    ours = get_peft_model(tiny_llama(), VeraConfig(r=8, target_modules="all-linear", projection_prng_key=3))
    theirs = peft.get_peft_model(tiny_llama(), peft.VeraConfig(r=8, target_modules="all-linear", projection_prng_key=3))
    assert torch.equal(ours.adapter_shared["default"].vera_A, theirs.base_model.vera_A["default"])
    assert torch.equal(ours.adapter_shared["default"].vera_B, theirs.base_model.vera_B["default"])

def test_loha_lokr_on_conv1d_refused_for_peft(tmp_path):
    for cfg in (LohaConfig(r=2), LokrConfig(r=2)):
        with pytest.raises(ValueError, match="does not wrap transformers' Conv1D"): to_hf_peft(get_peft_model(tiny_gpt2(), cfg), tmp_path)
    assert not (tmp_path / "adapter_config.json").exists()

def test_lokr_factorization_is_peft_s():
    from peft.tuners.lokr.layer import factorization as theirs
    from peft_notes.reparam import factorization
    for dim in list(range(1, 300)) + [384, 1536, 4096, 11008, 14336]:
        for f in (-1, 2, 4, 8, 16, 5):
            assert factorization(dim, f) == theirs(dim, f), (dim, f)

# AdaLoRA: the inference form. PEFT cuts pruned ranks out of its files; ours keeps them as zeros
from peft_notes.reparam import AdaloraConfig

def _adalora_run(pm, x, steps=12):
    "Train with the hooks, so that ranks are really pruned and a rank_pattern is written."
    opt = torch.optim.Adam([p for p in pm.parameters() if p.requires_grad], lr=2e-2)
    pm.train()
    for t in range(steps):
        z = pm(**x).logits
        loss = torch.nn.functional.cross_entropy(z.reshape(-1, z.shape[-1]), torch.zeros(z.shape[:-1], dtype=torch.long).reshape(-1))
        loss = loss + pm.extra_loss(); loss.backward(); opt.step(); pm.after_step(t, steps); opt.zero_grad()
    return pm.eval()

@pytest.mark.parametrize("make", [tiny_bert, tiny_llama], ids=["bert", "llama"])
def test_adalora_ours_loads_in_peft(make, tmp_path):
    x = _inputs()
    ours = _adalora_run(get_peft_model(make(), AdaloraConfig(init_r=6, target_r=3, tinit=2, tfinal=4, total_step=12, target_modules="all-linear")), x)
    pattern = ours.saved_config().rank_pattern
    assert ours.peft_config["default"].rank_pattern is None   # the allocation lives on the layers; the config is a value
    assert pattern and sum(map(sum, pattern.values())) == 3 * len(pattern)
    to_hf_peft(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(make(), tmp_path).eval()
    assert {tuple(m.lora_E["default"].shape) for m in theirs.modules() if hasattr(m, "lora_E") and "default" in m.lora_E} != {(6, 1)}  # PEFT rebuilt the pruned shapes
    with torch.no_grad(): torch.testing.assert_close(theirs(**x).logits, ours(**x).logits, atol=1e-5, rtol=0)
    back = from_hf_peft(make(), tmp_path)
    assert back.saved_config().rank_pattern == pattern
    with torch.no_grad(): torch.testing.assert_close(back(**x).logits, ours(**x).logits, atol=1e-6, rtol=0)

def test_adalora_peft_trained_loads_here(tmp_path):
    x = _inputs()
    theirs = peft.get_peft_model(tiny_bert(), peft.AdaLoraConfig(init_r=6, target_r=3, tinit=2, tfinal=4, total_step=12, target_modules=["query", "value"]))
    opt = torch.optim.Adam([p for p in theirs.parameters() if p.requires_grad], lr=2e-2)
    theirs.train()
    for t in range(12):
        z = theirs(**x).logits
        loss = torch.nn.functional.cross_entropy(z, torch.zeros(z.shape[0], dtype=torch.long))
        loss.backward(); opt.step(); theirs.base_model.update_and_allocate(t); opt.zero_grad()
    theirs.eval(); theirs.save_pretrained(tmp_path)
    ours = from_hf_peft(tiny_bert(), tmp_path)
    assert ours.saved_config().rank_pattern is not None
    with torch.no_grad(): torch.testing.assert_close(ours(**x).logits, theirs(**x).logits, atol=1e-5, rtol=0)
