"""The quantized family's base (chapter *Quantized bases*): every weight-update method of the reparameterized family trains over a QuantizedLinear."""
import copy
import pytest, torch
from torch import nn
from peft_notes.core import get_peft_model, list_methods
from peft_notes.models import tiny_bert, tiny_llama
from peft_notes.methods.quantized.formats import QuantConfig, QuantizedLinear, quantize_model

WEIGHT_UPDATES = ["lora", "dora", "vera", "loha", "lokr", "adalora", "dylora", "sora"]   # the family table's methods: they wrap QuantizedLinear

@pytest.mark.parametrize("method", WEIGHT_UPDATES)
@pytest.mark.parametrize("make", [tiny_bert, tiny_llama], ids=["bert", "llama"])
def test_weight_update_methods_train_over_a_quantized_base(method, make):
    "Over an NF4 base: the outputs start at the quantized base's, every trained tensor gets a non-zero gradient within two steps, the base's codes never change, and merging is refused by name."
    torch.manual_seed(0)
    model = quantize_model(make(), QuantConfig("nf4", block_size=32))
    codes = {n: b.clone() for n, b in model.named_buffers()}
    x = {"input_ids": torch.randint(3, 90, (2, 7))}
    with torch.no_grad(): y0 = model.eval()(**x).logits
    cfg = list_methods()[method]()
    if method == "adalora": cfg.total_step = 10
    pm = get_peft_model(model, cfg)
    assert any(isinstance(m, QuantizedLinear) for m in pm.modules())
    with torch.no_grad(): assert torch.allclose(pm.eval()(**x).logits, y0, atol=1e-6)
    params = {n: p for n, p in pm.named_parameters() if p.requires_grad}
    opt = torch.optim.Adam(params.values(), lr=1e-2); pm.train(); seen = set()
    for step in range(3):
        opt.zero_grad(); loss = pm(**x).logits.float().pow(2).mean(); loss.backward()
        seen |= {n for n, p in params.items() if p.grad is not None and p.grad.abs().sum() > 0}; opt.step()
    assert seen == set(params), sorted(set(params) - seen)[:5]
    assert all(torch.equal(b, codes[n.removeprefix("base_model.")]) for n, b in pm.named_buffers() if n.removeprefix("base_model.") in codes and b.dtype == torch.uint8)
    with pytest.raises(TypeError, match="QuantizedLinear stores its weight as nf4 codes"): pm.merge_adapter()

def test_a_qlora_adapter_on_a_base_of_the_wrong_shape_is_refused_and_the_model_is_unchanged(tmp_path):
    "Loading a saved QLoRA onto a full-precision base of another width: a clear error, and the base keeps its full-precision layers (the quantization is undone)."
    from peft_notes.core import PeftModel
    from peft_notes.methods.quantized.qlora import QLoraConfig
    pm = get_peft_model(tiny_bert(), QLoraConfig(r=4))
    pm.save_adapter(tmp_path)
    other = tiny_bert(hidden_size=64, intermediate_size=128)
    before = {n: type(m) for n, m in other.named_modules()}
    weights = {n: p.detach().clone() for n, p in other.named_parameters()}
    with pytest.raises(ValueError, match="shape"): PeftModel.from_pretrained(other, tmp_path)
    assert {n: type(m) for n, m in other.named_modules()} == before and not any(isinstance(m, QuantizedLinear) for m in other.modules())
    assert all(torch.equal(p, weights[n]) for n, p in other.named_parameters())

# the methods of the quantized family that rebuild the base themselves: each trains with every trained tensor getting a gradient
FAMILY = ["qlora", "loftq", "qa_lora", "qdylora", "peqa", "ir_qlora", "lq_lora"]
QA16 = {"quant_type": "int4", "block_size": 16, "zero_point": True, "target_modules": ["query", "value", "q_proj", "v_proj"]}   # the tiny models' 37-wide MLPs take no groups of 16

def _family_config(method):
    return list_methods()[method](quantization=QA16) if method == "qa_lora" else list_methods()[method]()

@pytest.mark.parametrize("method", FAMILY)
@pytest.mark.parametrize("make", [tiny_bert, tiny_llama], ids=["bert", "llama"])
def test_family_methods_give_every_trained_tensor_a_gradient(method, make):
    "One call on a full-precision model: the targets become QuantizedLinear, and within three steps every trained tensor gets a non-zero gradient (the repack trap's symptom is a None gradient with a loss that still requires grad)."
    torch.manual_seed(0)
    pm = get_peft_model(make(), _family_config(method))
    assert any(isinstance(m, QuantizedLinear) for m in pm.modules())
    x = {"input_ids": torch.randint(3, 90, (2, 7))}
    params = {n: p for n, p in pm.named_parameters() if p.requires_grad}
    opt = torch.optim.Adam(params.values(), lr=1e-2); pm.train(); seen = set()
    for _ in range(3):
        opt.zero_grad(); pm(**x).logits.float().pow(2).mean().backward()
        seen |= {n for n, p in params.items() if p.grad is not None and p.grad.abs().sum() > 0}; opt.step()
    assert params and seen == set(params), sorted(set(params) - seen)[:5]

def _plain_loftq(W, q, r, s, T):
    "Algorithm 1 of the LoftQ paper written out again, independently of `loftq_init`: Q_t = q(W - L_{t-1}), L_t = the rank-r SVD truncation of W - Q_t."
    from peft_notes.methods.quantized.formats import dequantize, quantize
    L = torch.zeros_like(W)
    for _ in range(T):
        state = quantize(W - L, q); Q = dequantize(state, q, tuple(W.shape))
        U, S, Vh = torch.linalg.svd(W - Q, full_matrices=False)
        L = U[:, :r] @ torch.diag(S[:r]) @ Vh[:r]
    return state, Q, L

@pytest.mark.parametrize("quant_type", ["nf4", "nf2"])
def test_loftq_layers_equal_a_plain_reimplementation(quant_type):
    """The model LoftqConfig builds against the plain algorithm, on tiny BERT and LLaMA (rsLoRA, so s is not 1): after one step the same Q bit for bit and
    s·BA its rank-r part; after three, the residuals differ in their last bits (BA is computed as two factors), so a weight at a bucket's edge may round
    the other way (and the double-quantized constants move with the blocks' mean): at most 1% of the codes differ, and Q and the low-rank parts agree to 1%."""
    from peft_notes.methods.quantized.loftq import LoftqConfig, LoftqLayer
    for make in (tiny_bert, tiny_llama):
        for T in (1, 3):
            torch.manual_seed(0); ref = make()
            weights = {n: m.weight.detach().clone() for n, m in ref.named_modules() if isinstance(m, nn.Linear)}
            cfg = LoftqConfig(r=4, alpha=8, use_rslora=True, loftq_iter=T, quantization={"quant_type": quant_type, "block_size": 32})
            pm = get_peft_model(ref, cfg)
            layers = [(n, l) for n, l in pm.base_model.named_modules() if isinstance(l, LoftqLayer)]
            assert layers
            for n, l in layers:
                state, Q, L = _plain_loftq(weights[n], cfg.quant_config(), 4, l.scaling["default"], T)
                ours, low = l.base_layer.dequantize(), l.scaling["default"] * l.lora_B["default"].weight @ l.lora_A["default"].weight
                if T == 1: assert torch.equal(ours, Q), n
                else:
                    assert (l.base_layer.codes != state["codes"]).float().mean() <= 0.01, n   # bytes of two codes each: an upper bound on the codes that differ
                    assert (ours - Q).norm() <= 1e-2 * Q.norm(), n
                assert (low - L).norm() <= 1e-2 * L.norm() + 1e-6, (n, T)

def test_loftq_error_is_below_qlora_start_at_every_step():
    """‖W - Q - sBA‖ against QLoRA's ‖W - q(W)‖ on every target of a tiny LLaMA: lower after any number of steps. Not monotone in T: the quantizer's grid
    moves with each block's absmax, so a step can undo a little of the one before (on MiniLM's real matrices, chapter *LoftQ*, it falls at each step)."""
    from peft_notes.methods.quantized.formats import dequantize, quantize
    from peft_notes.methods.quantized.loftq import loftq_init
    torch.manual_seed(0); m = tiny_llama()
    q = QuantConfig("nf2", block_size=32)
    for n, lin in m.named_modules():
        if not isinstance(lin, nn.Linear) or n == "lm_head": continue
        W = lin.weight.detach()
        errs = [(W - dequantize(quantize(W, q), q, tuple(W.shape))).norm().item()]
        for T in (1, 2, 4):
            state, A, B = loftq_init(W, q, 4, 2.0, T)
            errs.append((W - dequantize(state, q, tuple(W.shape)) - 2.0 * B @ A).norm().item())
        assert max(errs[1:]) < errs[0], (n, errs)

@pytest.mark.parametrize("method", ["loftq", "lq_lora"])
def test_a_loftq_adapter_on_a_base_of_the_wrong_shape_is_refused_and_the_model_is_unchanged(tmp_path, method):
    "The saved codes of another width (LoftQ's, LQ-LoRA's): a clear shape error, and the base keeps its full-precision layers."
    from peft_notes.core import PeftModel
    get_peft_model(tiny_bert(), list_methods()[method](r=4)).save_adapter(tmp_path)
    other = tiny_bert(hidden_size=64, intermediate_size=128)
    before = {n: type(m) for n, m in other.named_modules()}
    with pytest.raises(ValueError, match="shape"): PeftModel.from_pretrained(other, tmp_path)
    assert {n: type(m) for n, m in other.named_modules()} == before


def _qalora_layer(pool, hidden, g):
    from peft_notes.methods.quantized.qa_lora import QALoraConfig
    torch.manual_seed(0)
    pm = get_peft_model(tiny_llama(hidden_size=hidden), QALoraConfig(r=4, alpha=8, pool=pool, quantization={**QA16, "block_size": g}))
    layer = pm.base_model.model.layers[0].self_attn.q_proj
    with torch.no_grad(): layer.lora_B["default"].weight.normal_()
    return layer

@pytest.mark.parametrize("hidden, g, sum_agrees", [(32, 8, False), (64, 8, True)])
def test_qa_lora_pooling_against_peft_forward(hidden, g, sum_agrees):
    """Hugging Face PEFT's QA-LoRA forward (`QALoraLinearVariant.forward`, written for GPTQ layers: fed our A, B, scaling and input through a namespace)
    equals ours with pool="peft"; with pool="sum" (the authors' code) it agrees only when g² = d_in."""
    import types
    from peft.tuners.lora.variants import QALoraLinearVariant
    for pool in ("peft", "sum"):
        layer = _qalora_layer(pool, hidden, g)
        x = torch.randn(2, 5, hidden, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            base = layer.base_layer(x)
            ns = types.SimpleNamespace(lora_A=layer.lora_A, lora_B=layer.lora_B, lora_dropout=layer.lora_dropout, scaling=layer.scaling,
                                       qalora_group_size={"default": g}, in_features=hidden, training=False)
            same = torch.allclose(layer.combine(x, base, "default"), QALoraLinearVariant.forward(ns, "default", x, base), atol=1e-5)
        assert same == (pool == "peft" or sum_agrees), (pool, hidden, g)

def test_qa_lora_merge_with_float32_zero_points_is_exact():
    "With int_constants='float32', merging into the zero points and unmerging are exact to float32: the merged output equals the unmerged one to 1e-5, and the zero points come back to float32 rounding (1e-5 of a quantization step)."
    from peft_notes.methods.quantized.qa_lora import QALoraConfig
    torch.manual_seed(0)
    pm = get_peft_model(tiny_llama(), QALoraConfig(r=4, quantization={**QA16, "int_constants": "float32"}))
    for n, p in pm.named_parameters():
        if "lora_B" in n: torch.nn.init.normal_(p, std=0.1)
    x = {"input_ids": torch.randint(3, 90, (2, 7))}
    zeros = {n: b.clone() for n, b in pm.named_buffers() if n.endswith(".zero")}
    assert zeros and all(z.dtype == torch.float32 for z in zeros.values())
    with torch.no_grad():
        y = pm.eval()(**x).logits; pm.merge_adapter(); y_merged = pm(**x).logits; pm.unmerge_adapter()
    torch.testing.assert_close(y_merged, y, atol=1e-5, rtol=0)
    assert max((b - zeros[n]).abs().max().item() for n, b in pm.named_buffers() if n in zeros) < 1e-5

@pytest.mark.parametrize("method", ["qa_lora", "peqa"])
def test_merged_and_unloaded_models_stay_quantized(method):
    "QA-LoRA and PEQA merge into the base's constants: merge_and_unload leaves QuantizedLinear layers with the codes they had and the adapted output."
    torch.manual_seed(0)
    pm = get_peft_model(tiny_bert(), _family_config(method))
    for n, p in pm.named_parameters():
        if p.requires_grad: torch.nn.init.normal_(p, mean=1.0 if "peqa_ratio" in n else 0.0, std=0.1)
    codes = {n.replace(".base_layer", "").removeprefix("base_model."): b.clone() for n, b in pm.named_buffers() if n.endswith(".codes")}
    x = {"input_ids": torch.randint(3, 90, (2, 7))}
    with torch.no_grad(): y = pm.eval()(**x).logits
    plain = pm.merge_and_unload()
    with torch.no_grad(): y_plain = plain(**x).logits
    torch.testing.assert_close(y_plain, y, atol=1e-3, rtol=0)
    held = {n + ".codes": m.codes for n, m in plain.named_modules() if isinstance(m, QuantizedLinear)}
    assert held and set(held) == set(codes) and all(torch.equal(held[n], codes[n]) for n in held)

def test_peqa_and_qa_lora_refuse_a_base_of_another_format():
    "A base quantized to NF4 before: PEQA has no per-channel scale to train, QA-LoRA no zero point to fold into; both refuse, naming it."
    from peft_notes.methods.quantized.peqa import PeqaConfig
    from peft_notes.methods.quantized.qa_lora import QALoraConfig
    with pytest.raises(TypeError, match="per-channel scales"): get_peft_model(quantize_model(tiny_bert(), QuantConfig("nf4", block_size=32)), PeqaConfig())
    with pytest.raises(TypeError, match="zero points"): get_peft_model(quantize_model(tiny_bert(), QuantConfig("nf4", block_size=32)), QALoraConfig())

def test_ir_qlora_delta_weight_is_its_forward():
    "The elastic connection is linear: get_delta_weight (s·(B + β_B R)(A + β_A P)) applied to an input equals what the layer adds to its base's output."
    from peft_notes.methods.quantized.ir_qlora import IRQLoraConfig, IRQLoraLayer
    torch.manual_seed(0)
    pm = get_peft_model(tiny_llama(), IRQLoraConfig(r=4, tau_n=3))
    layer = next(m for m in pm.modules() if isinstance(m, IRQLoraLayer))
    with torch.no_grad():
        for n, p in layer.named_parameters():
            if p.requires_grad: p.normal_()
        x = torch.randn(3, 5, layer.in_features)
        added = layer.combine(x, torch.zeros(3, 5, layer.out_features), "default")
        torch.testing.assert_close(added, x @ layer.get_delta_weight("default").T, atol=1e-4, rtol=1e-4)

def test_icq_codes_carry_more_information_than_plain_nf4():
    "On weights whose blocks are off centre, ICQ's codes have more entropy than plain NF4's, and its dequantized weight is as close or closer."
    from peft_notes.methods.quantized.ir_qlora import ICQLinear, code_entropy
    from peft_notes.methods.quantized.formats import unpack
    g = torch.Generator().manual_seed(0)
    W = torch.randn(64, 256, generator=g) * 0.02 + torch.randn(64, 1, generator=g) * 0.01   # each row off centre
    q = QuantConfig("nf4", block_size=64)
    plain, icq = QuantizedLinear(256, 64, False, q), ICQLinear(256, 64, False, q, tau_n=20)
    plain.set_weight(W); icq.set_weight(W)
    H = lambda l: code_entropy(unpack(l.codes, 4, W.numel()).view(-1, 64), 16).mean().item()
    assert H(icq) > H(plain)
    assert (icq.dequantize() - W).norm() <= 1.01 * (plain.dequantize() - W).norm()

def test_bitdelta_from_holds_the_signs_and_mean_magnitude_of_the_delta():
    "bitdelta_from on a base and a perturbed copy: each layer's delta weight is sign(W_ft - W)·mean|W_ft - W|; a copied head takes the fine-tune's weights."
    import copy
    from peft_notes.methods.quantized.low_bit import BitDeltaConfig, BitDeltaLayer, bitdelta_from
    torch.manual_seed(0)
    base = tiny_bert(num_labels=2); ft = copy.deepcopy(base)
    with torch.no_grad():
        for p in ft.parameters(): p.add_(torch.randn_like(p) * 0.01)
    fine = {n: m.weight.detach().clone() for n, m in ft.named_modules() if isinstance(m, nn.Linear)}
    pm = bitdelta_from(base, ft, BitDeltaConfig(modules_to_save=["classifier"]))
    layers = [(n, l) for n, l in pm.base_model.named_modules() if isinstance(l, BitDeltaLayer)]
    assert len(layers) == sum(1 for n in fine if n != "classifier")
    for n, l in layers:
        d = fine[n] - l.base_layer.weight
        torch.testing.assert_close(l.get_delta_weight("default"), d.sign() * d.abs().mean())
    assert torch.equal(pm.base_model.classifier.modules_to_save["default"].weight, ft.classifier.weight)

def test_distill_scales_trains_only_the_scales():
    "Scale distillation moves the α's toward the teacher and nothing else: signs, base, and a copied head unchanged."
    import copy
    from peft_notes.methods.quantized.low_bit import BitDeltaConfig, bitdelta_from, distill_scales
    torch.manual_seed(0)
    base = tiny_llama(); ft = copy.deepcopy(base)
    with torch.no_grad():
        for p in ft.parameters(): p.add_(torch.randn_like(p) * 0.02)
    pm = bitdelta_from(base, ft)
    before = {k: v.detach().clone() for k, v in pm.state_dict().items()}
    batches = [{"input_ids": torch.randint(3, 90, (2, 9), generator=torch.Generator().manual_seed(i))} for i in range(3)]
    losses = distill_scales(pm, ft, batches, steps=20, lr=1e-3)
    assert losses[-1] < losses[0]
    changed = {k for k, v in pm.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all("bitdelta_alpha" in k for k in changed), sorted(changed)[:3]

def test_quantize_adapter_rounds_to_the_bits_it_says():
    "After quantize_adapter(bits=k) each row of a LoRA matrix holds at most 2^k - 1 distinct values (2 for k = 1), and the byte count is k bits per weight plus an fp16 scale per row."
    from peft_notes.methods.quantized.low_bit import quantize_adapter
    torch.manual_seed(0)
    pm = get_peft_model(tiny_llama(), list_methods()["lora"](r=4))
    for n, p in pm.named_parameters():
        if p.requires_grad: torch.nn.init.normal_(p)
    mats = [p for p in pm.adapter_state_dict().values() if p.dim() == 2]
    trained = [w.detach().clone() for w in mats]
    for bits in (3, 1):
        with torch.no_grad():
            for w, t in zip(mats, trained): w.copy_(t)
        size = quantize_adapter(pm, bits)
        assert all(len(row.unique()) <= (2 if bits == 1 else 2 ** bits - 1) for w in mats for row in w)
        assert size["bytes"] == sum(w.numel() * bits / 8 + 2 * w.shape[0] for w in mats) and size["fp32 bytes"] == sum(4 * w.numel() for w in mats)


def _plain_lq(W, q, r, T):
    "The LQ-LoRA paper's alternation written out again, independently of `lq_decompose`: Q_0 = 0, L_t = the rank-r SVD truncation of W - Q_{t-1}, Q_t = q(W - L_t)."
    from peft_notes.methods.quantized.formats import dequantize, quantize
    Q = torch.zeros_like(W)
    for _ in range(T):
        U, S, Vh = torch.linalg.svd(W - Q, full_matrices=False)
        L = U[:, :r] @ torch.diag(S[:r]) @ Vh[:r]
        state = quantize(W - L, q); Q = dequantize(state, q, tuple(W.shape))
    return state, Q, L

@pytest.mark.parametrize("quant_type", ["nf4", "nf2"])
def test_lq_decompose_equals_a_plain_reimplementation_and_stops_at_the_first_rise(quant_type):
    """On every linear layer of a tiny LLaMA: the kept step's Q and L against the plain alternation run for as many steps (codes equal but for
    rounding at a bucket's edge, as in LoftQ's test), s·BA = L for any scaling, the errors falling until the last step, which (when the run stopped
    before `iters`) is the first rise, and the kept step the best."""
    from peft_notes.methods.quantized.formats import dequantize
    from peft_notes.methods.quantized.lq_lora import lq_decompose
    torch.manual_seed(0); m = tiny_llama(); q = QuantConfig(quant_type, block_size=32)
    for n, lin in m.named_modules():
        if not isinstance(lin, nn.Linear) or n == "lm_head": continue
        W = lin.weight.detach()
        state, A, B, errs = lq_decompose(W, q, 4, scaling=0.5, iters=12)
        kept = len(errs) - 1 if len(errs) < 12 else len(errs) - (errs[-1] >= min(errs[:-1]))   # the step whose (Q, L) came back
        assert all(a > b for a, b in zip(errs[:kept - 1], errs[1:kept])), (n, errs)
        if len(errs) < 12: assert errs[-1] >= errs[-2], (n, errs)
        ref_state, Q, L = _plain_lq(W, q, 4, kept)
        ours = dequantize(state, q, tuple(W.shape))
        assert (state["codes"] != ref_state["codes"]).float().mean() <= 0.01, n
        assert (ours - Q).norm() <= 1e-2 * Q.norm() and (0.5 * B @ A - L).norm() <= 1e-2 * L.norm() + 1e-6, n
        assert abs((W - ours - 0.5 * B @ A).norm().item() - min(errs)) <= 1e-4 * min(errs), n

def test_lq_allocate_finds_the_brute_force_optimum_on_random_problems():
    "Random errors and costs, 6 matrices x 3 options (729 assignments), budgets across the feasible range: the integer program's objective is the optimum's and within budget."
    import itertools
    from peft_notes.methods.quantized.lq_lora import lq_allocate
    g = torch.Generator().manual_seed(0)
    for trial in range(5):
        bits = (torch.rand(6, 3, generator=g) * 100 + 10).round().tolist()
        errs = torch.rand(6, 3, generator=g).tolist()
        lo, hi = sum(map(min, bits)), sum(map(max, bits))
        for budget in torch.linspace(lo, hi, 7).tolist():
            feasible = [(sum(errs[i][c] for i, c in enumerate(a)), a) for a in itertools.product(range(3), repeat=6) if sum(bits[i][c] for i, c in enumerate(a)) <= budget]
            got = lq_allocate(errs, bits, budget)
            assert sum(bits[i][c] for i, c in enumerate(got)) <= budget
            assert abs(sum(errs[i][c] for i, c in enumerate(got)) - min(feasible)[0]) <= 1e-9, (trial, budget)
    with pytest.raises(ValueError, match="below the"): lq_allocate(errs, bits, lo - 1)
    with pytest.raises(ValueError, match="matrices, options"): lq_allocate(errs, bits[:-1], hi)

def test_lq_lora_budget_mixes_formats_and_a_reload_rebuilds_each(tmp_path):
    "Under a budget between NF2 and NF4 the layers' formats differ and average within it; saved and loaded onto a fresh model, every layer has its format back and the outputs are equal."
    from peft_notes.core import PeftModel
    from peft_notes.methods.quantized.lq_lora import LqLoraConfig, quantized_bits
    torch.manual_seed(0); base = tiny_llama(); fresh = copy.deepcopy(base)
    menu = [{"quant_type": "nf2", "block_size": 16}, {"quant_type": "nf4", "block_size": 16}]
    pm = get_peft_model(base, LqLoraConfig(r=4, bit_budget=3.0, lq_iter=3, menu=menu, target_modules=["q_proj", "v_proj", "down_proj"]))
    rep = quantized_bits(pm.base_model)
    assert {v["format"] for v in rep["layers"].values()} == {"nf2/16", "nf4/16"} and rep["average"] <= 3.0
    x = torch.randint(3, 90, (2, 7))
    with torch.no_grad(): y = pm.eval()(input_ids=x).logits
    pm.save_adapter(tmp_path)
    again = PeftModel.from_pretrained(fresh, tmp_path)
    assert quantized_bits(again.base_model) == rep
    with torch.no_grad(): assert torch.equal(again.eval()(input_ids=x).logits, y)

@pytest.mark.parametrize("storage", [torch.uint8, torch.bfloat16, torch.float32])
def test_codes_as_parameters_keeps_the_bytes_and_the_outputs(storage, tmp_path):
    """The codes become frozen parameters in `storage` (what FSDP shards) without changing a byte the layer reads: same logits, same counted bytes,
    an adapter saved over it reloads onto a fresh full-precision model with equal outputs, and a weight set afterwards goes into the same parameter."""
    from peft_notes.core import PeftModel
    from peft_notes.methods.quantized.formats import QuantReport, quantize
    from peft_notes.methods.quantized.qlora import QLoraConfig, codes_as_parameters
    torch.manual_seed(0); base = tiny_llama(); fresh = copy.deepcopy(base)
    pm = get_peft_model(base, QLoraConfig(r=4, init_lora_weights=False)).eval()
    x = torch.randint(3, 90, (2, 7))
    with torch.no_grad(): y = pm(input_ids=x).logits
    before = QuantReport.of(pm.base_model).linear
    codes_as_parameters(pm, storage)
    q = [m for m in pm.modules() if isinstance(m, QuantizedLinear)]
    assert q and all(isinstance(m.codes, nn.Parameter) and m.codes.dtype == storage and not m.codes.requires_grad for m in q)
    with torch.no_grad(): assert torch.equal(pm(input_ids=x).logits, y)
    assert QuantReport.of(pm.base_model).linear == before
    pm.save_adapter(tmp_path)
    with torch.no_grad(): assert torch.equal(PeftModel.from_pretrained(fresh, tmp_path).eval()(input_ids=x).logits, y)
    w = torch.randn(q[0].out_features, q[0].in_features); param = q[0].codes
    q[0].set_weight(w)
    assert q[0].codes is param and torch.equal(q[0].state()["codes"], quantize(w, q[0].config)["codes"])
