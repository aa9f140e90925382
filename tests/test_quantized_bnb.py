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
