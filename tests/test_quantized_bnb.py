"""bitsandbytes as the oracle of our quantization formats (chapter *Quantized bases*): a test-time dependency only (the dev extra)."""
import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")          # bitsandbytes looks for a kernel on the hub first, then uses its bundled CPU library
import pytest, torch
from torch import nn
bnb_f = pytest.importorskip("bitsandbytes.functional", reason="bitsandbytes is in the dev extra: `make test` installs it")
from peft_notes.methods.quantized.formats import (QuantConfig, quantize, dequantize, nf_code, fp4_code, dynamic_code, unpack, absmax_of,
                                                   NF4_PAPER)

@pytest.fixture(scope="module")
def weights():
    "MiniLM's 37 linear weights, the real matrices the chapter quantizes."
    from peft_notes.models import load_minilm
    model, _ = load_minilm(num_labels=2)
    return {n: m.weight.detach() for n, m in model.named_modules() if type(m) is nn.Linear and "classifier" not in n}

def test_code_books_equal_bitsandbytes():
    assert (nf_code(4) - bnb_f.get_4bit_type("nf4", device="cpu")).abs().max() < 1e-4
    assert (nf_code(4) - torch.tensor(NF4_PAPER)).abs().max() < 1e-6
    assert (dynamic_code() - bnb_f.create_dynamic_map(signed=True)).abs().max() < 1e-6
    # bitsandbytes' FP4 is another 4-bit float: it differs from E2M1 in exactly one magnitude (1/192 where E2M1 has 1/12)
    theirs = {round(v, 5) for v in bnb_f.get_4bit_type("fp4", device="cpu").abs().tolist()}
    ours = {round(v, 5) for v in fp4_code().abs().tolist()}
    assert ours - theirs == {round(1 / 12, 5)} and theirs - ours == {round(1 / 192, 5)}

def _near_ties(x, code, ours, theirs)->float:
    "Where the codes differ: ours is the nearest level (by brute force); returns how much farther bitsandbytes' level is from the value (the largest excess, in units of the normalised code)."
    assert torch.equal(ours.long(), (x[:, None] - code[None]).abs().argmin(1)) or \
           ((x - code[ours.long()]).abs() <= (x[:, None] - code[None]).abs().amin(1) + 1e-7).all()
    return float(((x - code[theirs.long()]).abs() - (x - code[ours.long()]).abs()).max()) if len(x) else 0.0

def test_nf4_codes_equal_bitsandbytes_but_for_ties(weights):
    "Without double quantization: the absmax constants are equal, and the codes are, except at ties (counted; each one step, on a midpoint)."
    code, cfg, n_diff, n, far = nf_code(4), QuantConfig("nf4", double_quant=False), 0, 0, 0.0
    for name, w in weights.items():
        st = quantize(w, cfg)
        packed, qs = bnb_f.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
        assert torch.equal(st["absmax"], qs.absmax), name
        ours, theirs = unpack(st["codes"], 4, w.numel()), unpack(packed.flatten(), 4, w.numel())
        diff = ours != theirs
        x = (w.flatten().view(-1, 64) / st["absmax"][:, None]).flatten()[diff]
        far = max(far, _near_ties(x, code, ours[diff], theirs[diff]))
        n_diff += int(diff.sum()); n += w.numel()
        same = ~diff.view(w.shape)
        assert torch.allclose(dequantize(st, cfg, w.shape)[same], bnb_f.dequantize_4bit(packed, qs)[same], rtol=1e-6, atol=0), name
    assert n == sum(w.numel() for w in weights.values()) and n_diff <= 1e-5 * n and far < 1e-6, f"{n_diff} of {n} codes differ, bitsandbytes' level up to {far:.1e} farther"
    print(f"NF4 codes equal to bitsandbytes' on MiniLM: {n - n_diff:,} of {n:,}; {n_diff} differ, each a tie (bitsandbytes' level at most {far:.1e} farther than ours)")

def test_double_quantization_against_bitsandbytes(weights):
    "With double quantization: the 4-bit codes still equal, the 8-bit absmax codes but for ties, and the dequantized weights agree."
    cfg, dyn, worst, ties, far, n_codes = QuantConfig("nf4"), dynamic_code(), 0.0, 0, 0.0, 0
    for name, w in weights.items():
        st = quantize(w, cfg)
        packed, qs = bnb_f.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
        assert torch.allclose(st["absmax_mean"], qs.offset.reshape(1)) and torch.equal(st["absmax_scale"], qs.state2.absmax), name
        diff = st["absmax_codes"] != qs.absmax
        if diff.any():
            am = quantize(w, QuantConfig("nf4", double_quant=False))["absmax"] - st["absmax_mean"]
            blocks = torch.arange(len(am)) // cfg.dq_block_size
            x = (am / st["absmax_scale"][blocks])[diff]
            far = max(far, _near_ties(x, dyn, st["absmax_codes"][diff], qs.absmax[diff]))
            ties += int(diff.sum())
        n_codes += len(st["absmax_codes"])
        ours, theirs = dequantize(st, cfg, w.shape), bnb_f.dequantize_4bit(packed, qs)
        same_code = unpack(st["codes"], 4, w.numel()) == unpack(packed.flatten(), 4, w.numel())   # all but the ties of the test above
        same_block = ((~diff).repeat_interleave(64)[:w.numel()] & same_code).view(w.shape)        # and the block's absmax code the same
        assert torch.allclose(ours[same_block], theirs[same_block], rtol=1e-5, atol=1e-8), name
        worst = max(worst, ((ours - theirs).abs().max() / w.abs().max()).item())
    assert worst < 0.05 and ties <= 0.005 * n_codes and far < 2e-4, (worst, ties, far)
    print(f"double quantization: {ties} of {n_codes} absmax codes differ, ours the nearest level, bitsandbytes' at most {far:.1e} farther "
          f"(its CPU search is not exactly nearest); dequantized weights equal in the other blocks, within {worst:.1e} of a layer's largest weight in those")

def test_our_layer_keeps_the_gradient_after_an_eval_forward():
    "bitsandbytes' trap (a Linear4bit repacked at an eval forward without grad stops passing gradients, on CPUs with AVX512-BF16) cannot happen to ours."
    from peft_notes.methods.quantized.formats import QuantizedLinear
    lin = nn.Linear(64, 32)
    x = torch.randn(4, 64)
    ours = QuantizedLinear.from_linear(lin, QuantConfig("nf4")).eval()
    with torch.no_grad(): ours(x)                                  # an eval forward without grad first, as the trap needs
    xr = x.clone().requires_grad_(True); ours.train()(xr).sum().backward()
    assert xr.grad is not None and xr.grad.abs().sum() > 0

def _bnb_model(tmp_path, **kw):
    "A tiny BERT saved and loaded back through transformers' BitsAndBytesConfig (NF4, double quantization): a user's bitsandbytes base."
    from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig
    from peft_notes.models import tiny_bert
    d = tmp_path / "bert"
    if not d.exists(): tiny_bert(seed=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kw).save_pretrained(d)
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32,
                           llm_int8_skip_modules=["classifier"])   # a 2-way head stays full precision, as a user would keep it
    return AutoModelForSequenceClassification.from_pretrained(d, quantization_config=q, device_map="cpu")

def _steps(pm, x, n=2):
    "n Adam steps on a toy loss; the names of the trained tensors that got a non-zero gradient at some step."
    params = {k: p for k, p in pm.named_parameters() if p.requires_grad}
    opt, seen = torch.optim.Adam(params.values(), lr=1e-2), set()
    for _ in range(n):
        opt.zero_grad(); loss = pm(**x).logits.pow(2).mean(); loss.backward(); opt.step()
        seen |= {k for k, p in params.items() if p.grad is not None and p.grad.abs().sum() > 0}
    return params, seen, loss

def test_our_lora_on_a_bitsandbytes_base_equals_peft(tmp_path):
    "Our LoRA wraps bitsandbytes' Linear4bit (found through its registration, bitsandbytes imported only by then), trains every tensor, and loads in PEFT over the same base with the same logits."
    import peft
    from peft_notes.core import get_peft_model, stored_weight
    from peft_notes.interop import to_hf_peft
    from peft_notes.methods.reparameterized.lora import LoraConfig
    m = _bnb_model(tmp_path).train()                      # train mode before any forward: see the repack test below
    q = m.bert.encoder.layer[0].attention.self.query
    assert type(q).__name__ == "Linear4bit" and tuple(q.weight.shape) != (32, 32) and stored_weight(q) is not None
    x = {"input_ids": torch.randint(3, 90, (2, 7))}
    pm = get_peft_model(m, LoraConfig(r=4, alpha=8, target_modules=["query", "value"]))
    assert pm.base_model.bert.encoder.layer[0].attention.self.query.in_features == 32
    params, seen, _ = _steps(pm, x)
    assert seen == set(params) and len(params) == 8
    to_hf_peft(pm, tmp_path / "adapter")
    theirs = peft.PeftModel.from_pretrained(_bnb_model(tmp_path).train(), tmp_path / "adapter")
    x2 = {"input_ids": torch.randint(3, 90, (3, 9))}
    ours_y, theirs_y = pm.train()(**x2).logits, theirs.train()(**x2).logits   # no dropout anywhere: train mode is deterministic
    torch.testing.assert_close(ours_y, theirs_y, atol=1e-6, rtol=0)
    with pytest.raises(TypeError, match="Linear4bit stores its weight as bitsandbytes nf4 codes"): pm.merge_adapter()

def test_the_bitsandbytes_repack_trap(tmp_path):
    "On a CPU with AVX512-BF16, an eval forward without grad repacks a Linear4bit: then LoRA over it cannot train (no gradient, or bitsandbytes fails in its kernel). We warn when wrapping such a layer."
    from bitsandbytes.functional import has_avx512bf16
    from peft_notes.core import get_peft_model
    from peft_notes.methods.reparameterized.lora import LoraConfig
    if not has_avx512bf16(): pytest.skip("this CPU has no AVX512-BF16: bitsandbytes does not repack here")
    x = {"input_ids": torch.randint(3, 90, (2, 7))}
    kw = dict(hidden_size=64, intermediate_size=128)      # the CPU kernel needs rows of whole 64-blocks
    m = _bnb_model(tmp_path, **kw).eval()
    with torch.no_grad(): m(**x)
    assert m.bert.encoder.layer[0].attention.self.query.weight.quant_state.packing_format_for_cpu
    with pytest.warns(UserWarning, match="repacked for bitsandbytes' CPU inference kernel"):
        pm = get_peft_model(m, LoraConfig(r=4, target_modules=["query", "value"]))
    pm.train()
    try: params, seen, loss = _steps(pm, x); trapped = loss.requires_grad and seen == set()   # a loss that trains nothing
    except RuntimeError as e: trapped = "in-place" in str(e)   # or, with gradients flowing into the repacked path, bitsandbytes' own error
    assert trapped
    fresh = get_peft_model(_bnb_model(tmp_path, **kw).train(), LoraConfig(r=4, target_modules=["query", "value"]))
    params, seen, _ = _steps(fresh, x)
    assert seen == set(params)                            # train mode first: every tensor gets its gradient

def test_qlora_saves_as_a_peft_lora_that_loads_over_bitsandbytes(tmp_path):
    "Our QLoRA (its own NF4 base) saved in PEFT's format: PEFT loads it over the same model quantized by bitsandbytes with the same logits to rounding, and it reads back here as a QLoRA, bit for bit."
    import json, warnings, peft
    from peft_notes.core import get_peft_model
    from peft_notes.interop import to_hf_peft, from_hf_peft
    from peft_notes.methods.quantized.qlora import QLoraConfig
    from peft_notes.models import tiny_bert
    size = dict(hidden_size=64, intermediate_size=128)
    kw = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **size)
    pm = get_peft_model(tiny_bert(seed=0, **kw), QLoraConfig(r=4, alpha=8, modules_to_save=["classifier"])).train()
    x = {"input_ids": torch.randint(3, 90, (2, 7))}
    _steps(pm, x, 3)
    to_hf_peft(pm, tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["quantization"]["quant_type"] == "nf4" and saved["quantization"]["double_quant"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # PEFT: "Unexpected keyword arguments ['quantization'] for class LoraConfig, these are ignored"
        theirs = peft.PeftModel.from_pretrained(_bnb_model(tmp_path, **size).train(), tmp_path / "adapter")
    x2 = {"input_ids": torch.randint(3, 90, (3, 9))}
    ours_y = pm.train()(**x2).logits
    torch.testing.assert_close(theirs.train()(**x2).logits, ours_y, atol=1e-5, rtol=0)   # our NF4 codes are bitsandbytes' but for ties
    back = from_hf_peft(tiny_bert(seed=0, **kw), tmp_path / "adapter")
    assert type(back.peft_config["default"]).__name__ == "QLoraConfig"
    assert torch.equal(back.train()(**x2).logits, ours_y)
