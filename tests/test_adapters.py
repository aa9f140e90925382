"""Adapters (nbs/23_adapters): bad input, AdapterDrop's cut of the backward pass, Compacter's shared rules (a half-precision base: every method, in tests/test_matrix.py)."""
import pytest, torch
from torch import nn
from peft_notes.core import PeftModel, get_peft_model
from peft_notes.models import tiny_bert, tiny_llama, tiny_gpt2
from peft_notes.methods.additive.adapters import (BottleneckLayer, CompacterConfig, HoulsbyConfig, ParallelAdapterConfig, PfeifferConfig,
                                                   bottleneck_params)

def _unchanged(base, before):
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items()) and set(before) == set(base.state_dict())
    assert not any(isinstance(m, BottleneckLayer) for m in base.modules())
    assert all(p.requires_grad for p in base.parameters())

@pytest.mark.parametrize("make_cfg,msg", [
    (lambda: HoulsbyConfig(bottleneck=33), "a bottleneck of 33 units is larger than the hidden size 32"),
    (lambda: PfeifferConfig(reduction_factor=1, bottleneck=40), "larger than the hidden size 32"),
    (lambda: ParallelAdapterConfig(adapter_drop=2), "adapter_drop=2 drops every adapter: the model has 2 blocks"),
    (lambda: HoulsbyConfig(adapter_drop=7), "drops every adapter"),
    (lambda: CompacterConfig(bottleneck=6), "phm_dim=4 must divide the hidden size 32 and the bottleneck 6"),
    (lambda: CompacterConfig(phm_dim=5, bottleneck=10), "phm_dim=5 must divide"),
], ids=["bottleneck>d", "bottleneck>d-explicit", "drop-all", "drop-more", "phm-m", "phm-d"])
@pytest.mark.parametrize("make", [tiny_bert, tiny_llama, tiny_gpt2], ids=["bert", "llama", "gpt2"])
def test_bad_config_names_the_problem_and_keeps_the_model(make_cfg, msg, make):
    base = make(); before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(ValueError, match=msg): get_peft_model(base, make_cfg())
    _unchanged(base, before)

@pytest.mark.parametrize("kw,msg", [(dict(non_linearity="sigmoid"), "non_linearity must be one of"), (dict(bottleneck=0), "bottleneck must be a positive"),
                                    (dict(reduction_factor=0), "reduction_factor must be at least 1"), (dict(adapter_drop=-1), "adapter_drop must be 0 or more")])
def test_bad_fields(kw, msg):
    with pytest.raises(ValueError, match=msg): HoulsbyConfig(**kw)

def test_adapter_drop_stops_the_backward_pass():
    "No adapter below block n: the lower blocks get no gradient work (their input needs none), the upper ones train."
    base = tiny_bert(num_hidden_layers=4)
    pm = get_peft_model(base, HoulsbyConfig(bottleneck=4, adapter_drop=2))
    needs_grad = {}
    for i, blk in enumerate(base.bert.encoder.layer):
        blk.register_forward_hook(lambda m, a, out, i=i: needs_grad.__setitem__(i, (out[0] if isinstance(out, tuple) else out).requires_grad))
    pm(input_ids=torch.randint(0, 99, (2, 6))).logits.sum().backward()
    assert needs_grad == {0: False, 1: False, 2: True, 3: True}, needs_grad   # autograd records nothing in blocks 0 and 1
    assert pm.trainable_report().trainable == 2 * 2 * bottleneck_params(32, 4)

def test_compacter_rules_are_shared_trained_and_saved(tmp_path):
    torch.manual_seed(0)
    pm = get_peft_model(tiny_llama(), CompacterConfig(bottleneck=8))
    rules = pm.adapter_shared["default"].phm_rule
    layers = [l for _, l in pm.adapter_context().layers()]
    assert all(l.adapter["default"].down._rules[0].phm_rule is rules for l in layers)      # one set for every layer
    assert rules.requires_grad and "base_model.phm_rule" in pm.adapter_state_dict()
    x = torch.randint(0, 99, (2, 6))
    with torch.no_grad():
        for l in layers: l.adapter["default"].up.phm_s.normal_()                        # off init (s = 0 gives the rules no gradient yet)
    pm(input_ids=x).logits.sum().backward()
    assert rules.grad is not None and rules.grad.abs().sum() > 0
    with torch.no_grad():
        rules.add_(0.1)
        y = pm(input_ids=x).logits
    pm.save_adapter(tmp_path)
    torch.manual_seed(1)                                                                   # other random rules at load
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    with torch.no_grad(): assert torch.equal(loaded(input_ids=x).logits, y)
    assert not any(p.requires_grad for p in loaded.parameters())                         # the rules too, in inference mode


def test_an_adapter_on_a_module_that_returns_a_tuple():
    "LLaMA's attention returns (output, attention weights): a parallel adapter beside it changes the output only, alone and in a mixed batch."
    torch.manual_seed(0)
    pm = get_peft_model(tiny_llama(), ParallelAdapterConfig(bottleneck=4, target_modules=["self_attn"]), adapter_name="a")
    pm.add_adapter("b", ParallelAdapterConfig(bottleneck=4, target_modules=["self_attn"]))
    for n, p in pm.named_parameters():
        if ".adapter." in n: torch.nn.init.normal_(p, std=0.5)              # off the zero init, so each adapter changes the output
    pm.eval(); attn, seen = pm.base_model.model.layers[0].self_attn, []
    assert isinstance(attn, BottleneckLayer)
    attn.register_forward_hook(lambda m, a, out: seen.append(out))
    ids = torch.randint(0, 99, (3, 7))
    with torch.no_grad():
        with pm.disable_adapter(): base = pm(input_ids=ids).logits
        alone = {}
        for n in ("a", "b"): pm.set_adapter(n); alone[n] = pm(input_ids=ids).logits
        mixed = pm(input_ids=ids, adapter_names=["a", "b", "__base__"]).logits
    assert all(isinstance(o, tuple) and len(o) == len(seen[0]) for o in seen)       # the tuple's shape is kept
    assert all(torch.equal(o[1], seen[0][1]) if o[1] is not None else seen[0][1] is None for o in seen)   # its tail passed on
    assert (alone["a"] - base).abs().max() > 1e-3 and (alone["a"] - alone["b"]).abs().max() > 1e-3
    for i, want in enumerate([alone["a"][0], alone["b"][1], base[2]]): torch.testing.assert_close(mixed[i], want, atol=1e-5, rtol=1e-5)

def _tiny_opt():
    import transformers as T
    return T.OPTForCausalLM(T.OPTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=37, vocab_size=99,
                                        max_position_embeddings=64, word_embed_proj_dim=32)).eval()

def test_parallel_adapter_across_opts_feed_forward():
    "OPT's fc1 and fc2 sit in the decoder layer itself: the parallel adapter reads fc1's input and adds to fc2's output, mixed batches included."
    import torch
    from peft_notes.core import get_peft_model, list_methods
    from peft_notes.testing import check_method
    r = check_method(list_methods()["parallel_adapter"], _tiny_opt)
    assert r["init_max_diff"] == 0.0 and r["loss_after"] < r["loss_before"] and r["mixed_batch_max_diff"] <= 1e-5
    torch.manual_seed(0); base = _tiny_opt(); pm = get_peft_model(base, list_methods()["parallel_adapter"]())
    layer = pm.base_model.model.decoder.layers[0].fc2
    assert layer.placement["default"] == "across"
    with torch.no_grad(): layer.adapter["default"].up.weight.normal_()
    x = torch.randint(0, 99, (2, 5))
    seen = {}
    h = base.model.decoder.layers[0].fc1.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    with torch.no_grad():
        y_fc2 = {}
        h2 = layer.register_forward_hook(lambda m, a, out: y_fc2.setdefault("y", out))
        pm(input_ids=x); h.remove(); h2.remove()
        with pm.disable_adapter(): plain = layer.base_layer(torch.relu(base.model.decoder.layers[0].fc1(seen["x"])))
    a = layer.adapter["default"]
    torch.testing.assert_close(y_fc2["y"], plain + a(seen["x"]), atol=1e-6, rtol=0)   # fc2(relu(fc1 x)) + s·up(relu(down x)): beside the whole feed-forward
    pm.unload(); assert sum(len(m._forward_pre_hooks) for m in base.modules()) == 0

def test_lora_mixed_batch_on_opts_flattened_feed_forward():
    "OPT flattens the batch to tokens before fc1/fc2: a mixed batch routes each example's tokens, not rows 0..B-1."
    from peft_notes.core import list_methods
    from peft_notes.testing import check_method
    r = check_method(lambda: list_methods()["lora"](target_modules=["fc1", "fc2"]), _tiny_opt)
    assert r["mixed_batch_max_diff"] <= 1e-5
