"""Composition: several adapters active at once — stacked on one module, of different methods — and per-example routing in one batch
(`adapter_names=`), with Hugging Face PEFT's mixed-batch forward as the oracle."""
import pytest, torch
peft = pytest.importorskip("peft")  # dev extra; `make test` installs it, so this never skips there
from peft_notes.core import AdapterLayer, PeftModel, get_peft_model
from peft_notes.interop import to_hf_peft
from peft_notes.models import tiny_bert, tiny_llama
from peft_notes.reparam import LoraConfig, LoraLayer
from peft_notes.methods.additive.ia3 import IA3Config, IA3Layer
from peft_notes.methods.selective.bitfit import BitFitConfig
from peft_notes.methods.hybrid.noah import NOAHConfig
from peft_notes.methods.hybrid.search import S4Config
from peft_notes.testing import check_method

def _nudge(pm, names, seed=0):
    "Move the named adapters' tensors off their init, so that each one changes the output."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n in names:
            for p in pm.adapter_state_dict(n).values():
                if p.is_floating_point() and p.dtype != torch.bool: p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return pm.eval()

IDS = torch.randint(0, 99, (3, 9), generator=torch.Generator().manual_seed(0))

# ---------------- stacked on one module ----------------
@pytest.fixture
def stacked():
    pm = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["k_proj", "v_proj"]), "lora")
    pm.add_adapter("ia3", IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]))
    pm.set_adapter(["lora", "ia3"])
    return _nudge(pm, ["lora", "ia3"])

def test_two_methods_stack_on_one_linear(stacked):
    top = stacked.base_model.model.layers[0].self_attn.k_proj
    assert isinstance(top, IA3Layer) and isinstance(top.base_layer, LoraLayer) and isinstance(top.base_layer.base_layer, torch.nn.Linear)
    x = torch.randn(2, 5, 32)
    inner = top.base_layer
    lora = inner.base_layer(x) + inner.lora_B["lora"](inner.lora_A["lora"](x)) * inner.scaling["lora"]
    with torch.no_grad(): torch.testing.assert_close(top(x), lora * top.ia3_l["ia3"].flatten(), atol=1e-6, rtol=0)  # l ⊙ (Wx + sBAx)
    assert stacked.active_adapters == ["lora", "ia3"]
    trainable = {n for n, p in stacked.named_parameters() if p.requires_grad}
    assert any(".lora_A." in n for n in trainable) and any(".ia3_l." in n for n in trainable)

def test_stack_disables_merges_and_unloads(stacked):
    base = tiny_llama()
    with torch.no_grad():
        y0, y = base(IDS).logits, stacked(IDS).logits
        assert not torch.allclose(y, y0)
        with stacked.disable_adapter(): assert torch.equal(stacked(IDS).logits, y0)
        with pytest.raises(ValueError, match="not merged; merge those first"): stacked.merge_adapter(["ia3"])
        stacked.merge_adapter()                                   # every active adapter, innermost first
        torch.testing.assert_close(stacked(IDS).logits, y, atol=1e-5, rtol=0)
        stacked.unmerge_adapter()
        torch.testing.assert_close(stacked(IDS).logits, y, atol=1e-5, rtol=0)
    stacked.delete_adapter("lora")
    assert stacked.active_adapters == ["ia3"] and isinstance(stacked.base_model.model.layers[0].self_attn.k_proj.base_layer, torch.nn.Linear)
    plain = stacked.unload()
    assert not any(isinstance(m, AdapterLayer) for m in plain.modules())
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain.state_dict().values(), base.state_dict().values()))

def test_stacked_adapters_train_together_and_reload(stacked, tmp_path):
    stacked.train()
    opt = torch.optim.Adam([p for p in stacked.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3): opt.zero_grad(); stacked(IDS, labels=IDS).loss.backward(); opt.step()
    stacked.eval()
    for n in ("lora", "ia3"): stacked.save_adapter(tmp_path / n, n)
    back = PeftModel.from_pretrained(tiny_llama(), tmp_path / "lora", "lora")
    back.load_adapter(tmp_path / "ia3", "ia3"); back.set_adapter(["lora", "ia3"])
    with torch.no_grad(): assert torch.equal(back(IDS).logits, stacked(IDS).logits)

# ---------------- per-example routing ----------------
def _two_loras():
    pm = get_peft_model(tiny_llama(), LoraConfig(r=4, alpha=8, target_modules="all-linear"), "a")
    pm.add_adapter("b", LoraConfig(r=2, alpha=4, target_modules=["q_proj", "v_proj"]))
    return _nudge(pm, ["a", "b"])

def _check_each_row_alone(pm, ids, names):
    "The mixed-batch logits of example i equal example i run alone with its adapter set ('__base__': adapters disabled)."
    with torch.no_grad():
        mixed = pm(ids, adapter_names=names).logits
        for i, n in enumerate(names):
            if n == "__base__":
                with pm.disable_adapter(): alone = pm(ids[i:i + 1]).logits
            else: pm.set_adapter(n); alone = pm(ids[i:i + 1]).logits
            torch.testing.assert_close(mixed[i:i + 1], alone, atol=1e-5, rtol=0)

def test_a_mixed_batch_equals_each_example_alone():
    pm = _two_loras()
    assert pm.active_adapters == ["a"]
    with torch.no_grad(): pm(IDS, adapter_names=["b", "b", "__base__"])
    assert pm.active_adapters == ["a"]   # routing does not change the active adapter
    _check_each_row_alone(pm, IDS, ["a", "b", "__base__"])

def test_a_mixed_batch_equals_peft(tmp_path):
    pm = _two_loras()
    for n in ("a", "b"): to_hf_peft(pm, tmp_path / n, n)
    theirs = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path / "a", adapter_name="a")
    theirs.load_adapter(tmp_path / "b", adapter_name="b"); theirs.eval()
    names = ["b", "__base__", "a"]
    with torch.no_grad():
        ours, want = pm(IDS, adapter_names=names).logits, theirs(IDS, adapter_names=names).logits
    compared = sum(1 for m in theirs.modules() if hasattr(m, "lora_A") and {"a", "b"} & set(m.lora_A))
    assert compared == 2 * 7 and not torch.allclose(ours[0], ours[1])   # 7 linear layers per block carry an adapter
    torch.testing.assert_close(ours, want, atol=1e-5, rtol=0)

def test_mixed_batch_across_kinds_and_heads():
    "LoRA, (IA)³ (input and output side) and BitFit deltas, each with its own head, in one batch."
    pm = get_peft_model(tiny_bert(), LoraConfig(r=2, modules_to_save=["classifier"]), "lora")
    pm.add_adapter("ia3", IA3Config(modules_to_save=["classifier"])); pm.add_adapter("bitfit", BitFitConfig(target_modules=["intermediate.dense", "output.dense"], modules_to_save=["classifier"]))
    _nudge(pm, ["lora", "ia3", "bitfit"])
    _check_each_row_alone(pm, torch.randint(0, 99, (4, 9), generator=torch.Generator().manual_seed(1)), ["ia3", "bitfit", "__base__", "lora"])

def test_generate_with_a_mixed_batch():
    pm = _two_loras()
    names = ["a", "b"]
    with torch.no_grad():
        out = pm.generate(IDS[:2], adapter_names=names, max_new_tokens=4, do_sample=False, pad_token_id=0)
        for i, n in enumerate(names):
            pm.set_adapter(n)
            assert torch.equal(out[i:i + 1], pm.generate(IDS[i:i + 1], max_new_tokens=4, do_sample=False, pad_token_id=0))

@pytest.mark.parametrize("names,train,msg", [(["a", "b"], False, "adapter_names has 2 names for a batch of 3"),
                                             (["a", "zz", "__base__"], False, "unknown adapter(s) ['zz']"),
                                             (["a", "b", "a"], True, "adapter_names is for inference")])
def test_bad_routing_is_refused(names, train, msg):
    pm = _two_loras().train(train)
    with pytest.raises(ValueError, match=msg.replace("(", "\\(").replace(")", "\\)").replace("[", "\\[").replace("]", "\\]")): pm(IDS, adapter_names=names)
    assert all(l.routing is None for _, l in pm.adapter_context().layers())

# ---------------- a method inside a module another method wraps ----------------
@pytest.mark.parametrize("order", [("parallel", "pfeiffer"), ("pfeiffer", "parallel")])
def test_a_method_inside_a_module_another_wraps(order, tmp_path):
    "BERT's parallel adapter wraps `output` (BertOutput), Pfeiffer's adapter the `output.dense` inside it: in either order both inject, save under the model's own names, reload exactly and unload to the base."
    from peft_notes.methods.additive.adapters import ParallelAdapterConfig, PfeifferConfig
    cfgs = {"parallel": ParallelAdapterConfig(bottleneck=4), "pfeiffer": PfeifferConfig(bottleneck=4)}
    base = tiny_bert().eval()
    with torch.no_grad(): y0 = base(IDS).logits.clone()
    pm = get_peft_model(base, cfgs[order[0]], order[0]); pm.add_adapter(order[1], cfgs[order[1]]); pm.set_adapter(list(order))
    pm = _nudge(pm, list(order))
    for n in order:
        keys = list(pm.adapter_state_dict(n))
        assert keys and not any("base_layer" in k for k in keys), keys[:2]
        pm.save_adapter(tmp_path / n, n)
    back = PeftModel.from_pretrained(tiny_bert(), tmp_path / order[0], order[0]); back.load_adapter(tmp_path / order[1], order[1]); back.set_adapter(list(order))
    with torch.no_grad():
        y = pm(IDS).logits
        assert not torch.allclose(y, y0) and torch.equal(back(IDS).logits, y)
        solo = PeftModel.from_pretrained(tiny_bert(), tmp_path / "pfeiffer", "pfeiffer")     # and alone, into a model with no parallel adapter
        pm.set_adapter("pfeiffer")
        assert torch.equal(solo(IDS).logits, pm(IDS).logits)
    plain = pm.unload()
    assert not any(isinstance(m, AdapterLayer) for m in plain.modules())
    with torch.no_grad(): assert torch.equal(plain(IDS).logits, y0)

@pytest.mark.parametrize("make", [tiny_bert, tiny_llama], ids=["bert", "llama"])
def test_the_attention_tap_comes_off_with_the_last_adapter_that_uses_it(make):
    "UniPELT's gated prefix and S⁴'s layer prefix hook every attention module once; the hooks go with the last adapter using them, and unload leaves none."
    from peft_notes.methods.hybrid.combined import UniPELTConfig, attention_modules
    base = make(); hooks = lambda: sum(len(m._forward_pre_hooks) for m in base.modules())
    ids = torch.randint(3, 99, (2, 6))
    with torch.no_grad(): ref = base(input_ids=ids).logits
    before, n = hooks(), len(attention_modules(base))
    pm = get_peft_model(base, UniPELTConfig(), adapter_name="u")
    assert hooks() == before + n
    pm.add_adapter("s", S4Config(strategies=["P", "P", "P", "P"])); assert hooks() == before + n   # one tap, shared
    pm.delete_adapter("u"); assert hooks() == before + n                                          # "s" still reads it
    pm.add_adapter("l", LoraConfig()); pm.delete_adapter("s"); assert hooks() == before
    pm.add_adapter("u2", UniPELTConfig()); assert hooks() == before + n
    plain = pm.unload()
    assert plain is base and hooks() == before
    with torch.no_grad(): torch.testing.assert_close(plain(input_ids=ids).logits, ref, atol=0, rtol=0)

@pytest.mark.parametrize("make,cfg", [
    (tiny_bert, lambda: S4Config(strategies=["L", "B", "BL", "L"])),
    (tiny_llama, lambda: S4Config(strategies=["L", "L", "L", "L"])),                  # LLaMA has no biases: no BitFit
    (tiny_bert, lambda: NOAHConfig(adapter_sizes=[0, 0], lora_ranks=[2, 4], prompt_lengths=[0, 0])),
    (tiny_llama, lambda: NOAHConfig(adapter_sizes=[0, 0], lora_ranks=[4, 0], prompt_lengths=[0, 0])),
], ids=["s4-LB-bert", "s4-L-llama", "noah-lora-bert", "noah-lora-llama"])
def test_a_hybrid_whose_parts_all_merge_merges(make, cfg):
    "Every part mergeable (LoRA, BitFit): the hybrid merges, and the merged model gives the unmerged output (the shared matrix's merge check)."
    r = check_method(cfg, make)
    assert r["merge_max_diff"] <= 1e-5 and "merge" not in r

def test_a_hybrid_with_a_part_that_cannot_merge_names_it():
    "An adapter and a prefix among LoRA parts: the refusal names the parts that cannot merge, and nothing is merged."
    pm = get_peft_model(tiny_bert(), S4Config(strategies=["AL", "AL", "PL", "PL"]))
    with pytest.raises(TypeError, match=r"'s4' adapters cannot be merged.*PfeifferConfig.*LayerPrefixPart") as e: pm.merge_adapter()
    assert "LoraConfig" not in str(e.value) and not any(l.merged for _, l in pm._layers())   # the LoRA part merges alone, but nothing was merged

# ---------------- composition blocks: stack, parallel, average, and a block added by the user ----------------
from peft_notes.core import Average, Block, Parallel, Stack, register_block, BLOCKS
from peft_notes.methods.additive.adapters import PfeifferConfig, ResidualAdapterConfig

def _pfeiffers(names=("a", "b")):
    pm = get_peft_model(tiny_bert(), PfeifferConfig(bottleneck=4), names[0])
    for n in names[1:]: pm.add_adapter(n, PfeifferConfig(bottleneck=4))
    return _nudge(pm, list(names))

def _by_hand(pm, names, mix, x):
    "The first block's adapted module output, computed from the bottleneck adapters' own modules: `mix(h, {name: yᵢ})`."
    layer = pm.base_model.bert.encoder.layer[0].output.dense
    with torch.no_grad():
        h = layer.base_layer(x)
        return mix(h, {n: h + layer.adapter[n](h) for n in names}), layer

def test_parallel_and_average_mix_each_adapter_from_the_same_output():
    pm, x = _pfeiffers(), torch.randn(2, 5, 37)
    for comp, mix in [("parallel", lambda h, ys: h + sum(y - h for y in ys.values())),
                      (Average([1, 3]), lambda h, ys: h + 0.25 * (ys["a"] - h) + 0.75 * (ys["b"] - h)),
                      ("stack", None)]:
        pm.set_adapter(["a", "b"], composition=comp)
        want, layer = _by_hand(pm, ["a", "b"], mix or (lambda h, ys: None), x)
        if mix is None:   # a stack: b on a's output
            with torch.no_grad(): h = layer.base_layer(x); ha = h + layer.adapter["a"](h); want = ha + layer.adapter["b"](ha)
        with torch.no_grad(): torch.testing.assert_close(layer(x), want, atol=1e-6, rtol=0)
    assert isinstance(pm.composition, Stack)

def test_loras_in_parallel_equal_their_stack_and_average_weighs_the_deltas():
    "LoRA's change is additive: parallel = stack (the deltas summed); Average(w) = each B scaled by its wᵢ."
    pm = _two_loras()
    with torch.no_grad():
        pm.set_adapter(["a", "b"]); y_stack = pm(IDS).logits
        pm.set_adapter(["a", "b"], composition="parallel"); torch.testing.assert_close(pm(IDS).logits, y_stack, atol=1e-5, rtol=0)
        pm.set_adapter(["a", "b"], composition=Average({"a": 0.3, "b": 0.7})); y_avg = pm(IDS).logits
        ref = _two_loras()
        for n, w in (("a", 0.3), ("b", 0.7)):
            for k, t in ref.adapter_state_dict(n).items():
                if "lora_B" in k: t.mul_(w)
        ref.set_adapter(["a", "b"])
        torch.testing.assert_close(y_avg, ref(IDS).logits, atol=1e-5, rtol=0)
        assert not torch.allclose(y_avg, y_stack)

def test_a_block_added_by_the_user_needs_no_method_forward():
    "A new block, registered in three lines, works on adapters of every side (output: Pfeiffer; input: (IA)³'s feed-forward; the call: residual; the module's tensors: BitFit)."
    @register_block("double_sum")
    class DoubleSum(Block):
        def mix(self, layer, h, ys): return h + 2 * sum(y - h for y in ys.values())
    try:
        for cfg in (lambda: PfeifferConfig(bottleneck=4), lambda: IA3Config(), lambda: ResidualAdapterConfig(bottleneck=4),
                    lambda: BitFitConfig(target_modules=["intermediate.dense", "output.dense"])):
            pm = get_peft_model(tiny_bert(), cfg(), "a"); pm.add_adapter("b", cfg()); _nudge(pm, ["a", "b"])
            with torch.no_grad():
                pm.set_adapter(["a", "b"], composition="parallel"); par = pm(IDS).logits
                with pm.disable_adapter(): y0 = pm(IDS).logits
                pm.set_adapter(["a", "b"], composition="double_sum"); dbl = pm(IDS).logits
                pm.set_adapter(["a", "b"], composition="stack"); stk = pm(IDS).logits
            assert not torch.allclose(dbl, par) and not torch.allclose(par, y0)
            if isinstance(cfg(), (PfeifferConfig, ResidualAdapterConfig)): assert not torch.allclose(stk, par, atol=1e-4)   # a serial adapter on another's output is not the sum
    finally: BLOCKS.pop("double_sum")

def test_adapters_in_parallel_train_together():
    pm = _pfeiffers(); pm.set_adapter(["a", "b"], composition="parallel"); pm.train()
    pm(IDS, labels=torch.tensor([0, 1, 0])).loss.backward()
    grads = {n: p.grad for n, p in pm.named_parameters() if p.requires_grad}
    assert any(".adapter.a." in n for n in grads) and any(".adapter.b." in n for n in grads)
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if ".up.bias" in n)   # the up-projection bias always gets one (a ReLU may leave a weight without)

@pytest.mark.parametrize("comp", ["stack", "parallel", Average([0.2, 0.8])], ids=["stack", "parallel", "average"])
def test_a_mixed_batch_with_every_block(comp):
    "Rows naming one adapter, a tuple of adapters (combined by the model's block), or none: each row equals it run alone, for output-side, input-side, call-side and tensor-delta methods with heads."
    pm = get_peft_model(tiny_bert(), PfeifferConfig(bottleneck=4, modules_to_save=["classifier"]), "p1")
    pm.add_adapter("p2", PfeifferConfig(bottleneck=4, modules_to_save=["classifier"]))
    pm.add_adapter("i1", IA3Config()); pm.add_adapter("i2", IA3Config())
    pm.add_adapter("r1", ResidualAdapterConfig(bottleneck=4)); pm.add_adapter("r2", ResidualAdapterConfig(bottleneck=4))
    pm.add_adapter("b1", BitFitConfig(target_modules=["intermediate.dense"])); pm.add_adapter("b2", BitFitConfig(target_modules=["intermediate.dense"]))
    _nudge(pm, ["p1", "p2", "i1", "i2", "r1", "r2", "b1", "b2"])
    ids = torch.randint(0, 99, (6, 7), generator=torch.Generator().manual_seed(2))
    for pair in (("p1", "p2"), ("i1", "i2"), ("r1", "r2"), ("b1", "b2")):
        pm.set_adapter(list(pair), composition=comp)
        names = [pair, "__base__", pair[1], pair, pair[0], "__base__"]
        with torch.no_grad():
            mixed = pm(ids, adapter_names=names).logits
            for i, e in enumerate(names):
                if e == "__base__":
                    with pm.disable_adapter(): alone = pm(ids[i:i + 1]).logits
                else: pm.set_adapter(list(e) if isinstance(e, tuple) else e, composition=comp); alone = pm(ids[i:i + 1]).logits
                torch.testing.assert_close(mixed[i:i + 1], alone, atol=1e-5, rtol=0)
            pm.set_adapter(list(pair), composition=comp)
            assert not torch.allclose(mixed[0], pm(ids[0:1], adapter_names=[pair[0]]).logits[0])

def test_bad_compositions_are_refused_and_change_nothing():
    pm = _two_loras()
    with pytest.raises(ValueError, match="unknown composition 'sum'"): pm.set_adapter(["a", "b"], composition="sum")
    with pytest.raises(ValueError, match=r"Average has 3 weights for 2 active adapters"): pm.set_adapter(["a", "b"], composition=Average([1, 2, 3]))
    with pytest.raises(ValueError, match=r"sum to 0"): pm.set_adapter(["a", "b"], composition=Average([1, -1]))
    assert pm.active_adapters == ["a"] and isinstance(pm.composition, Stack)
    pm.add_adapter("ia3", IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]))
    with pytest.raises(ValueError, match=r"at model.layers.0.self_attn.k_proj they sit in different methods' layers \(IA3Layer: \['ia3'\], LoraLayer: \['a'\]\)"):
        pm.set_adapter(["a", "ia3"], composition="parallel")
    assert pm.active_adapters == ["a"]
    pm.eval()
    with pytest.raises(ValueError, match="an empty tuple"): pm(IDS, adapter_names=[(), "a", "a"])
    with pytest.raises(ValueError, match=r"unknown adapter\(s\) \['zz'\]"): pm(IDS, adapter_names=[("a", "zz"), "a", "a"])
    pm.set_adapter(["a", "b"], composition=Average([1, 1]))
    with pytest.raises(ValueError, match=r"Average weights name \['a', 'b'\], but the active adapters are \['a', 'ia3'\]"): pm(IDS, adapter_names=[("a", "ia3"), "a", "a"])
