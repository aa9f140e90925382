"""Scale and shift: SSF (merged = unmerged, a bias made where a layer had none and removed again), MoV (a per-token mixture
of (IA)³ vectors), PASTA (offsets at the special tokens only); counts by formula on the shipped MiniLM; bad input."""
import copy, pytest, torch
from peft_notes.core import AdapterLayer, PeftModel, get_peft_model
from peft_notes.models import load_minilm, tiny_bert, tiny_gpt2, tiny_llama
from peft_notes.methods.additive.scale_shift import (MoVConfig, MoVLayer, PastaConfig, SSFConfig, SSFLayer, mov_params, pasta_params, ssf_params)
from peft_notes.testing import default_inputs

MODELS = {"bert": tiny_bert, "llama": tiny_llama, "gpt2": tiny_gpt2}

def _out(m, x):
    with torch.no_grad(): return m(**x).logits

@pytest.mark.parametrize("arch", MODELS)
def test_ssf_merged_equals_unmerged_and_unmerge_restores_the_model(arch):
    base = MODELS[arch]()
    x = default_inputs(base)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    pm = get_peft_model(base, SSFConfig(init_ssf_weights=False))
    y = _out(pm, x)
    with pm.disable_adapter(): assert not torch.allclose(y, _out(pm, x))   # random γ, β: the adapter is in the computation
    pm.merge_adapter()
    assert (_out(pm, x) - y).abs().max().item() <= 1e-6
    if arch == "llama": assert base.model.layers[0].self_attn.q_proj.bias is not None   # LLaMA's projections got a bias to hold β
    pm.unmerge_adapter()
    after = pm.base_model.state_dict()
    plain = {k.replace(".base_layer", ""): v for k, v in after.items() if "ssf_" not in k}
    assert set(plain) == set(state) and max((plain[k] - state[k]).abs().max().item() for k in state) <= 1e-6   # no bias left behind
    merged = copy.deepcopy(pm).merge_and_unload()
    assert not any(isinstance(m, AdapterLayer) for m in merged.modules()) and (_out(merged, x) - y).abs().max().item() <= 1e-6

def test_ssf_targets_every_linear_and_layernorm_but_the_head():
    pm = get_peft_model(tiny_bert(), SSFConfig())
    paths = [p for p, _ in pm.adapter_context().layers()]
    assert "bert.embeddings.LayerNorm" in paths and "bert.encoder.layer.1.output.LayerNorm" in paths and "bert.encoder.layer.0.attention.self.query" in paths
    assert not any(p.startswith("classifier") for p in paths)

def test_mov_scales_depend_on_the_token():
    pm = get_peft_model(tiny_llama(), MoVConfig(num_experts=4, init_ia3_weights=False))
    layer = next(l for _, l in pm.adapter_context().layers(MoVLayer))
    h = torch.randn(1, 5, layer.in_features)
    s = layer.scale(h, "default")
    assert s.shape == (1, 5, layer.out_features) and not torch.allclose(s[0, 0], s[0, 1])
    with torch.no_grad(): layer.mov_experts["default"].fill_(1.0)
    assert torch.equal(layer.scale(h, "default"), torch.ones_like(s))     # experts at 1: exactly 1, whatever the router says

def _with_specials(model):
    x = default_inputs(model); x["input_ids"][:, 0] = 1; x["input_ids"][:, -1] = 2; return x

def test_pasta_changes_only_what_special_tokens_reach():
    pm = get_peft_model(tiny_llama(), PastaConfig(special_token_ids=[1, 2]))
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad: p.normal_()
    x = _with_specials(pm.base_model)
    with pm.disable_adapter(): y0 = _out(pm, x)
    y = _out(pm, x)
    assert not torch.allclose(y[:, 0], y0[:, 0])   # the special token at position 0 moves (a causal LM: position 0 reads only itself)
    plain = {"input_ids": torch.randint(3, 99, (2, 6))}                                    # no special token: the base, bit for bit
    with pm.disable_adapter(): z0 = _out(pm, plain)
    assert torch.equal(_out(pm, plain), z0)
    with pytest.raises(ValueError, match="inputs_embeds are not supported"):
        pm(inputs_embeds=torch.randn(2, 3, 32))

def test_counts_by_formula_on_minilm():
    base = lambda: load_minilm(num_labels=2)[0]
    d, L, ff = 384, 6, 1536
    r = get_peft_model(base(), SSFConfig()).trainable_report().trainable
    widths = [d] + L * [d, d, d, d, d, ff, d, d] + [d]       # embeddings' LN; per block q, k, v, o, LN, ffn in, ffn out, LN; the pooler
    assert r == ssf_params(widths)
    r = get_peft_model(base(), MoVConfig(num_experts=10)).trainable_report().trainable
    # (IA)³'s default targets, as PEFT's: keys, values (d_in d, width d) and, on the input side, every `output.dense` — the
    # feed-forward's (1536 wide) and, by the same suffix, the attention's output projection (384)
    assert r == mov_params(10, L * [(d, d), (d, d), (d, d), (ff, ff)]) == 322_560
    assert get_peft_model(base(), PastaConfig()).trainable_report().trainable == pasta_params(6, 2, 384) == 4_608   # [CLS] and [SEP]

def test_bad_input_is_refused_and_the_model_is_unchanged():
    def unchanged(model, fn, match, exc=ValueError):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(exc, match=match): fn(model)
        assert not any(isinstance(m, AdapterLayer) for m in model.modules()) and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="num_experts must be at least 1"): MoVConfig(num_experts=0)
    unchanged(tiny_bert(), lambda m: get_peft_model(m, PastaConfig()), "names no special token ids")
    unchanged(tiny_bert(), lambda m: get_peft_model(m, SSFConfig(target_modules=["word_embeddings"])), "cannot wrap", TypeError)
    pm = get_peft_model(tiny_llama(), MoVConfig())
    with pytest.raises(TypeError, match="cannot be merged"): pm.merge_adapter()
    pm = get_peft_model(tiny_llama(), SSFConfig())
    with torch.no_grad(): next(p for n, p in pm.named_parameters() if "ssf_scale" in n).zero_()
    w = {k: v.clone() for k, v in pm.base_model.state_dict().items()}
    with pytest.raises(ValueError, match="zero or non-finite scale"): pm.merge_adapter(safe_merge=True)
    assert all(torch.equal(w[k], v) for k, v in pm.base_model.state_dict().items())
