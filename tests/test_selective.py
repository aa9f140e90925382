"""The selective family (nbs/30_bitfit, nbs/31_structured): Hugging Face PEFT's `ln_tuning` as the oracle both ways,
the base bit-identical over its whole state dict after training, adapters of the family side by side, and bad input."""
import pytest, torch
import transformers as T
peft = pytest.importorskip("peft")  # dev extra; `make test` installs it, so this never skips there
from peft_notes.core import PeftModel, TensorDeltaLayer, get_peft_model
from peft_notes.interop import from_hf_peft, to_hf_peft
from peft_notes.models import tiny_bert, tiny_gpt2, tiny_llama
from peft_notes.methods.selective.bitfit import BitFitConfig
from peft_notes.methods.selective.structured import LNTuningConfig, PartialConfig, XattnTuningConfig, is_norm, xattn_tuning_params
from peft_notes.testing import check_method

X = torch.randint(3, 99, (3, 9), generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 0])
MODELS = {"bert": tiny_bert, "llama": tiny_llama, "gpt2": tiny_gpt2}
HEAD = {"bert": ["classifier"]}

def _train(m, steps=5, lr=5e-2):
    "A few real steps: the sequence-classification loss on BERT, the causal LM loss on the decoders."
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=lr); m.train()
    cls = "SequenceClassification" in type(m.get_base_model() if hasattr(m, "get_base_model") else m).__name__
    for _ in range(steps):
        opt.zero_grad(); m(input_ids=X, labels=Y if cls else X).loss.backward(); opt.step()
    return m.eval()

def _gap(a, b):
    with torch.no_grad(): return (a(input_ids=X).logits - b(input_ids=X).logits).abs().max().item()

@pytest.mark.parametrize("arch", MODELS)
def test_ln_tuning_loads_in_peft(arch, tmp_path):
    make = MODELS[arch]
    ours = _train(get_peft_model(make(), LNTuningConfig(modules_to_save=HEAD.get(arch))))
    to_hf_peft(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(make(), tmp_path).eval()
    assert theirs.peft_config["default"].peft_type == "LN_TUNING" and _gap(ours, theirs) <= 1e-5
    with torch.no_grad():   # and the adapter is in both computations: trained, it is not the base
        assert (ours(input_ids=X).logits - make()(input_ids=X).logits).abs().max() > 1e-3

@pytest.mark.parametrize("arch", MODELS)
def test_peft_ln_tuning_loads_here(arch, tmp_path):
    make = MODELS[arch]
    norms = [n for n, m in make().named_modules() if is_norm(m)]
    theirs = _train(peft.get_peft_model(make(), peft.LNTuningConfig(target_modules=norms, modules_to_save=HEAD.get(arch))))
    theirs.save_pretrained(tmp_path)
    ours = from_hf_peft(make(), tmp_path)
    assert _gap(ours, theirs) <= 1e-5
    assert all(k.endswith(("base_delta.weight", "base_delta.bias")) or "classifier" in k for k in ours.adapter_state_dict())
    ours.save_adapter(tmp_path / "ours")                                  # and it saves here as deltas, reloading the same
    assert _gap(PeftModel.from_pretrained(make(), tmp_path / "ours"), theirs) <= 1e-5

def test_peft_ln_tuning_for_another_model_is_refused(tmp_path):
    "A PEFT LN-tuning adapter whose norms do not fit the base: a clear error, and the model is unchanged."
    big = T.LlamaForCausalLM(T.LlamaConfig(vocab_size=99, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37))
    peft.get_peft_model(big, peft.LNTuningConfig(target_modules=["input_layernorm"])).save_pretrained(tmp_path)
    base = tiny_llama(); before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(ValueError, match="has shape"): from_hf_peft(base, tmp_path)
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items()) and not any(isinstance(m, TensorDeltaLayer) for m in base.modules())

@pytest.mark.parametrize("arch", MODELS)
def test_the_base_is_bit_identical_after_training(arch):
    "Every entry outside what each adapter trains is untouched — checked over the whole state dict — and each adapter trained its own."
    make = MODELS[arch]
    base = make(); before = {k: v.clone() for k, v in base.state_dict().items()}
    pm = get_peft_model(base, LNTuningConfig(), adapter_name="ln")
    pm.add_adapter("top", PartialConfig(top_k=1))
    for name in ("ln", "top"): pm.set_adapter(name); _train(pm)
    now = {k.replace(".base_layer", ""): v for k, v in pm.get_base_model().state_dict().items() if ".base_delta." not in k}
    assert set(now) == set(before) and all(torch.equal(now[k], before[k]) for k in before)
    assert all(d.abs().max() > 0 for n in ("ln", "top") for d in pm.adapter_state_dict(n).values())   # every delta moved
    with torch.no_grad(), pm.disable_adapter(): assert torch.equal(pm(input_ids=X).logits, make()(input_ids=X).logits)

def test_partial_takes_the_top_blocks_of_each_stack():
    make = lambda: T.T5ForConditionalGeneration(T.T5Config(d_model=32, d_kv=8, d_ff=37, num_layers=3, num_decoder_layers=2, num_heads=4, vocab_size=99))
    pm = get_peft_model(make(), PartialConfig(top_k=1))
    paths = [p for p, _ in pm.adapter_context().layers(TensorDeltaLayer)]
    assert {p.split(".")[0] + "." + p.split(".")[2] for p in paths} == {"encoder.2", "decoder.1"}
    plain = make()
    assert pm.trainable_report().trainable == sum(p.numel() for b in (plain.encoder.block[2], plain.decoder.block[1]) for p in b.parameters())

def test_partial_trains_every_tensor_of_the_block_and_no_other():
    base = tiny_llama()
    pm = get_peft_model(base, PartialConfig(top_k=1))
    trained = {k.removeprefix("base_model.model.").replace(".base_delta", "") for k in pm.adapter_state_dict()}
    assert trained == {f"model.layers.1.{n}" for n, _ in tiny_llama().model.layers[1].named_parameters()}

@pytest.mark.parametrize("make_cfg,model,match", [
    (lambda: PartialConfig(top_k=0), None, "top_k must be at least 1"),
    (lambda: PartialConfig(top_k=3), tiny_bert, "block stacks are shorter"),
    (lambda: LNTuningConfig(target_modules=["query"]), tiny_bert, "is a Linear"),
    (lambda: LNTuningConfig(), lambda: T.T5EncoderModel(T.T5Config(d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=4, vocab_size=99)).encoder.block[0].layer[1].DenseReluDense, "no normalisation layer"),
    (lambda: PartialConfig(), lambda: torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()), "no numbered transformer blocks"),
])
def test_bad_input(make_cfg, model, match):
    if model is None:
        with pytest.raises(ValueError, match=match): make_cfg()
        return
    base = model(); before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises((ValueError, TypeError), match=match): get_peft_model(base, make_cfg())
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items()) and not any(isinstance(m, TensorDeltaLayer) for m in base.modules())

ENC_DEC = {"t5": lambda: T.T5ForConditionalGeneration(T.T5Config(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_decoder_layers=3, num_heads=4, vocab_size=99, decoder_start_token_id=0)),
           "bart": lambda: T.BartForConditionalGeneration(T.BartConfig(d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4, decoder_attention_heads=4,
                                                                        encoder_ffn_dim=37, decoder_ffn_dim=37, vocab_size=99, max_position_embeddings=64))}
def _seq2seq_inputs(m):
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(3, 99, (2, 9), generator=g), "decoder_input_ids": torch.randint(3, 99, (2, 5), generator=g)}

@pytest.mark.parametrize("arch", ENC_DEC)
def test_xattn_tuning_matrix_on_encoder_decoders(arch):
    "The shared matrix on T5 (no biases) and BART (biases): exactly the cross-attention's tensors train, by the formula."
    r = check_method(XattnTuningConfig, ENC_DEC[arch], _seq2seq_inputs, lr=5e-2)
    assert r["loss_after"] < r["loss_before"] and r["init_max_diff"] == 0.0 and r["mixed_batch_max_diff"] <= 1e-5
    assert r["trainable"] == xattn_tuning_params(32, 32, 3, bias=arch == "bart")

@pytest.mark.parametrize("arch", ENC_DEC)
def test_xattn_tuning_changes_only_the_cross_attention(arch):
    base = ENC_DEC[arch](); before = {k: v.clone() for k, v in base.state_dict().items()}
    pm = get_peft_model(base, XattnTuningConfig())
    x = _seq2seq_inputs(base); opt = torch.optim.Adam([p for p in pm.parameters() if p.requires_grad], lr=5e-2); pm.train()
    for _ in range(3): opt.zero_grad(); pm(**x, labels=x["decoder_input_ids"]).loss.backward(); opt.step()
    trained = {k.removeprefix("base_model.model.").replace(".base_delta", "") for k in pm.adapter_state_dict()}
    xattn = "EncDecAttention" if arch == "t5" else "encoder_attn."
    assert trained == {k for k in before if xattn in k and "layer_norm" not in k}
    pm.merge_adapter()
    merged = pm.get_base_model().state_dict()
    changed = {k.replace(".base_layer", "") for k, v in merged.items() if ".base_delta." not in k and not torch.equal(v, before[k.replace(".base_layer", "")])}
    assert changed and changed <= trained                                    # merged: only the cross-attention's tensors moved
    assert all(torch.equal(v, before[k]) for k, v in pm.unload().state_dict().items() if k not in trained)

def test_xattn_tuning_refuses_a_model_without_cross_attention():
    base = tiny_bert(); before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(ValueError, match="needs an encoder–decoder"): get_peft_model(base, XattnTuningConfig())
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items()) and not any(isinstance(m, TensorDeltaLayer) for m in base.modules())

def test_with_bitfit_on_the_same_norm():
    "BitFit and LN-tuning both train a LayerNorm's shift: each holds its own delta, and both together add."
    pm = get_peft_model(tiny_bert(), BitFitConfig(), adapter_name="bias")
    pm.add_adapter("ln", LNTuningConfig())
    layer = pm.base_model.bert.embeddings.LayerNorm
    assert set(layer.base_delta) == {"bias", "ln"} and set(layer.base_delta["bias"]) == {"bias"} and set(layer.base_delta["ln"]) == {"weight", "bias"}

# --- sparse deltas and FishMask (nbs/32_unstructured) ---------------------------------------------------------------
from peft_notes.core import read_safetensors
from peft_notes.methods.selective.sparse import FishMaskConfig, SparseDeltaLayer, fisher_information, top_k_entries
from safetensors.torch import save_file

def _fish(make, density=0.05, **kw):
    pm = get_peft_model(make(), FishMaskConfig(density=density, **kw))
    pm.before_training([{"input_ids": X, "labels": Y if make is tiny_bert else X}])
    return pm

def test_fisher_information_is_the_mean_of_per_example_squared_gradients():
    m = tiny_bert().eval(); t = [m.classifier.weight, m.bert.pooler.dense.bias]
    got = fisher_information(m, [{"input_ids": X, "labels": Y}], t, n_samples=3)
    want = [torch.zeros_like(x) for x in t]
    for i in range(3):
        for w, g in zip(want, torch.autograd.grad(m(input_ids=X[i:i + 1], labels=Y[i:i + 1]).loss, [p.requires_grad_(True) for p in t])): w += g ** 2 / 3
    for g, w in zip(got, want): torch.testing.assert_close(g, w)
    assert not m.training

def test_top_k_is_global_and_exact():
    scores = {"a": torch.tensor([5., 1., 3.]), "b": torch.tensor([[4., 0.], [2., 6.]])}
    assert {k: v.tolist() for k, v in top_k_entries(scores, 3 / 7).items()} == {"a": [0], "b": [0, 3]}

@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_fish_mask_leaves_every_other_entry_of_the_base_untouched(arch):
    make = MODELS[arch]
    pm = _fish(make); base_sd = {k: v.clone() for k, v in make().state_dict().items()}
    opt = torch.optim.Adam([p for p in pm.parameters() if p.requires_grad], lr=5e-2); pm.train()
    for _ in range(5): opt.zero_grad(); pm(input_ids=X, labels=Y if arch == "bert" else X).loss.backward(); opt.step()
    now = {k.replace(".base_layer", ""): v for k, v in pm.get_base_model().state_dict().items() if ".sparse_" not in k}
    assert set(now) == set(base_sd) and all(torch.equal(now[k], base_sd[k]) for k in base_sd)
    pm.merge_adapter()                                          # merged: exactly the chosen entries differ from the base
    merged = {k.replace(".base_layer", ""): v for k, v in pm.get_base_model().state_dict().items() if ".sparse_" not in k}
    changed = sum(int((merged[k] != base_sd[k]).sum()) for k in base_sd)
    chosen = sum(int((v != 0).sum()) for k, v in pm.adapter_state_dict().items() if k.endswith("sparse_values.weight") or k.endswith("sparse_values.bias"))
    assert 0 < changed == chosen

def test_two_fish_masks_coexist_and_fit_chooses_before_it_builds_the_optimizer():
    from torch.utils.data import DataLoader
    from peft_notes.train import fit
    pm = get_peft_model(tiny_bert(), FishMaskConfig(density=0.05), adapter_name="a")
    data = [{"input_ids": X, "labels": Y}] * 3
    fit(pm, DataLoader(data, batch_size=None), epochs=1, lr=1e-2, progress=False)
    pm.add_adapter("b", FishMaskConfig(density=0.02)); pm.set_adapter("b")
    fit(pm, DataLoader(data, batch_size=None), epochs=1, lr=1e-2, progress=False)
    sizes = {n: sum(v.numel() for k, v in pm.adapter_state_dict(n).items() if "sparse_values" in k) for n in ("a", "b")}
    assert sizes["a"] > sizes["b"] > 0
    assert all(v.abs().max() > 0 for n in ("a", "b") for k, v in pm.adapter_state_dict(n).items() if "sparse_values" in k and v.numel() > 2)

def _saved(tmp_path):
    pm = _fish(tiny_bert); pm.save_adapter(tmp_path); return tmp_path

@pytest.mark.parametrize("corrupt,match", [
    (lambda t, k: t.__setitem__(k, torch.cat([t[k][:-1], torch.tensor([10**6], dtype=t[k].dtype)])), "falls outside"),
    (lambda t, k: t.__setitem__(k, t[k].flip(0)), "strictly increasing"),
])
def test_a_sparse_file_with_bad_indices_is_refused_and_the_model_unchanged(tmp_path, corrupt, match):
    folder = _saved(tmp_path)
    t = read_safetensors(folder / "adapter_model.safetensors")
    k = max((k for k in t if k.endswith("sparse_index.weight")), key=lambda k: t[k].numel())
    corrupt(t, k); save_file(t, str(folder / "adapter_model.safetensors"))
    base = tiny_bert(); before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(ValueError, match=match): PeftModel.from_pretrained(base, folder)
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items()) and not any(isinstance(m, SparseDeltaLayer) for m in base.modules())

def test_a_sparse_adapter_for_another_base_shape_is_refused(tmp_path):
    folder = _saved(tmp_path)
    other = T.BertForSequenceClassification(T.BertConfig(vocab_size=99, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="falls outside|does not fit|shape"): PeftModel.from_pretrained(other, folder)
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items()) and not any(isinstance(m, SparseDeltaLayer) for m in other.modules())

@pytest.mark.parametrize("density", [0.0, -0.1, 1.5])
def test_density_outside_0_1_is_refused(density):
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"): FishMaskConfig(density=density)

from peft_notes.methods.selective.sparse import ChildTuningConfig, ChildTuningLayer, LTSFTConfig, movement

def test_movement_puts_every_tensor_back_bit_for_bit():
    m = tiny_bert(); before = {k: v.clone() for k, v in m.state_dict().items()}
    t = [m.bert.encoder.layer[0].attention.self.query.weight, m.bert.encoder.layer[1].output.dense.bias]
    moved = movement(m, [{"input_ids": X, "labels": Y}], t, steps=3, lr=1e-2)
    assert all(x.max() > 0 for x in moved)                                   # they moved in the run...
    assert all(p.requires_grad for p in m.parameters()) and not m.training     # ...and the model's flags and its eval mode are as they were
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    assert all(p.grad is None for p in t)

def test_lt_sft_chooses_the_entries_that_moved_most():
    "The entries LT-SFT keeps are exactly the top share of |θ₁ − θ₀| after its first fine-tuning (same seed, same run)."
    data = [{"input_ids": X, "labels": Y}]
    pm = get_peft_model(tiny_bert(), LTSFTConfig(density=0.01, select_steps=3, select_lr=1e-2))
    cands = pm.peft_config["default"].candidates(pm.adapter_context())
    torch.manual_seed(0); want = top_k_entries({(n, p): m for (n, p, _), m in zip(cands, movement(pm, data, [t for *_, t in cands], 3, 1e-2))}, 0.01)
    torch.manual_seed(0); pm.before_training(data)
    got = {(path, p): i.long() for path, l in pm.adapter_context().layers(SparseDeltaLayer) for p, i in l.sparse_index["default"].items()}
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert sum(len(v) for v in got.values()) == round(0.01 * sum(t.numel() for *_, t in cands))

def test_child_tuning_task_free_masks_each_steps_gradient():
    "One step of fit at p = 0.25 moves about a quarter of the entries; the next step draws a new child network."
    from torch.utils.data import DataLoader
    from peft_notes.train import fit
    pm = get_peft_model(tiny_bert(), ChildTuningConfig(density=0.25))
    fit(pm, DataLoader([{"input_ids": X, "labels": Y}], batch_size=None), epochs=1, lr=1e-2, warmup=0, progress=False)
    d = [v for v in pm.adapter_state_dict().values()]
    share = sum(int((t != 0).sum()) for t in d) / sum(t.numel() for t in d)
    assert 0.2 < share < 0.3
    layer = next(l for _, l in pm.adapter_context().layers(ChildTuningLayer))
    first = {k: m.clone() for k, m in layer.grad_mask["default"].items()}
    pm.before_step(1, 2)
    assert any(not torch.equal(first[k], m) for k, m in layer.grad_mask["default"].items())

def test_child_tuning_task_driven_is_a_fisher_choice():
    pm = get_peft_model(tiny_bert(), ChildTuningConfig(mode="task_driven", density=0.1))
    assert pm.trainable_report().trainable == 0
    pm.before_training([{"input_ids": X, "labels": Y}])
    assert pm.peft_config["default"].layer_cls is SparseDeltaLayer and pm.trainable_report().trainable > 0

# --- diff pruning -------------------------------------------------------------------------------------------------------
from peft_notes.methods.selective.sparse import DiffPruningConfig, expected_l0, hard_concrete, l0_search

def test_expected_l0_is_the_probability_a_gate_is_open():
    a = torch.tensor([-4.0, -1.0, 0.0, 2.0, 5.0])
    for stretch, beta in [((-1.5, 1.5), 1.0), ((-0.1, 1.1), 2 / 3)]:
        torch.manual_seed(0); z = hard_concrete(a.repeat(100_000, 1), stretch, beta)
        assert z.min() >= 0 and z.max() <= 1 and (z == 0).any() and (z == 1).any()
        assert ((z > 0).float().mean(0) - expected_l0(a, stretch, beta)).abs().max() < 0.01
    assert torch.equal(hard_concrete(a, sample=False), (torch.sigmoid(a) * 3 - 1.5).clamp(0, 1))

def test_l0_search_leaves_the_base_and_the_modes_as_they_were_and_the_penalty_closes_gates():
    m = tiny_bert().eval(); before = {k: v.clone() for k, v in m.state_dict().items()}
    t = [m.bert.encoder.layer[0].intermediate.dense.weight, m.bert.encoder.layer[1].output.dense.weight]
    for p in m.parameters(): p.requires_grad_(False)
    torch.manual_seed(0); dfree, free = l0_search(m, [{"input_ids": X, "labels": Y}], t, steps=20, lr=1e-2, gate_lr=0.3, l0_lambda=0.0)
    torch.manual_seed(0); delta, pen = l0_search(m, [{"input_ids": X, "labels": Y}], t, steps=20, lr=1e-2, gate_lr=0.3, l0_lambda=10.0)
    assert pen[-1] < free[-1] and pen[-1] < pen[0]
    assert [d.shape for d in delta] == [x.shape for x in t] and all(d.abs().max() > 0 for d in dfree)
    assert sum(int((d != 0).sum()) for d in delta) < sum(int((d != 0).sum()) for d in dfree)   # the penalty's δ̂ is sparser
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items()) and not m.training

def test_diff_pruning_projects_and_starts_the_second_stage_at_the_first_stages_diff():
    "The kept entries are exactly the top |δ̂| of the first stage (same seed), start at δ̂ there, and everything else of the base is untouched after fit."
    from torch.utils.data import DataLoader
    from peft_notes.train import fit
    data = [{"input_ids": X, "labels": Y}]
    kw = dict(search_steps=4, search_lr=1e-2, gate_lr=0.3, l0_lambda=1.0)
    pm = get_peft_model(tiny_bert(), DiffPruningConfig(density=0.02, **kw))
    cands = pm.peft_config["default"].candidates(pm.adapter_context())
    twin = get_peft_model(tiny_bert(), DiffPruningConfig(density=0.02, **kw))
    twin_cands = twin.peft_config["default"].candidates(twin.adapter_context())
    torch.manual_seed(0); delta, _ = l0_search(twin, data, [t for *_, t in twin_cands], 4, 1e-2, 0.3, 1.0)
    want = top_k_entries({(n, p): d.abs() for (n, p, _), d in zip(cands, delta)}, 0.02)
    torch.manual_seed(0); pm.before_training(data)
    layers = dict(pm.adapter_context().layers(SparseDeltaLayer))
    got = {(path, p): i.long() for path, l in layers.items() for p, i in l.sparse_index["default"].items()}
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    start = {(n, p): d.flatten()[want[n, p]] for (n, p, _), d in zip(cands, delta) if (n, p) in want}
    assert all(torch.allclose(layers[path].sparse_values["default"][p].detach(), start[path, p]) for path, p in want)
    before = {k: v.clone() for k, v in pm.get_base_model().state_dict().items() if ".sparse_" not in k}
    fit(pm, DataLoader(data * 3, batch_size=None), epochs=1, lr=1e-2, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in pm.get_base_model().state_dict().items() if ".sparse_" not in k)

def test_diff_pruning_and_fish_mask_side_by_side(tmp_path):
    data = [{"input_ids": X, "labels": Y}]
    pm = get_peft_model(tiny_bert(), DiffPruningConfig(density=0.05, search_steps=3, search_lr=1e-2, gate_lr=0.3), adapter_name="dp")
    pm.before_training(data)
    pm.add_adapter("fish", FishMaskConfig(density=0.05, target_modules=["query"])); pm.set_adapter("fish"); pm.before_training(data)
    _train(pm); pm.set_adapter("dp"); _train(pm)
    outs = {}
    with torch.no_grad():
        for n in ("dp", "fish"): pm.set_adapter(n); outs[n] = pm(input_ids=X).logits
    assert not torch.allclose(outs["dp"], outs["fish"])
    pm.save_adapter(tmp_path, "dp")
    back = PeftModel.from_pretrained(tiny_bert(), tmp_path, adapter_name="dp")
    with torch.no_grad(): assert torch.equal(back(input_ids=X).logits, outs["dp"])

@pytest.mark.parametrize("kw,match", [(dict(stretch_low=0.0), "stretch must be"), (dict(stretch_high=1.0), "stretch must be"),
                                      (dict(search_steps=0), "search_steps must be"), (dict(beta=0.0), "beta must be positive"), (dict(density=2.0), "density must be")])
def test_diff_pruning_bad_config(kw, match):
    with pytest.raises(ValueError, match=match): DiffPruningConfig(**kw)

# --- FAR and SPT (nbs/33_chosen) ------------------------------------------------------------------------------------------
from peft_notes.methods.reparameterized.lora import LoraLayer
from peft_notes.methods.selective.chosen import FARConfig, SPTConfig, far_params, ffn_modules, sensitivity

def _far(make, **kw):
    pm = get_peft_model(make(), FARConfig(select_steps=3, select_lr=1e-2, **kw))
    pm.before_training([{"input_ids": X, "labels": Y if make is tiny_bert else X}])
    return pm

@pytest.mark.parametrize("arch", MODELS)
def test_far_trains_whole_nodes_the_same_in_every_matrix_of_a_block(arch):
    "Each block's chosen nodes are whole rows of the first matrices (GPT-2's Conv1D: columns), whole columns of the second, the same nodes in each, and their count is the formula's."
    pm = _far(MODELS[arch])
    layers = dict(pm.adapter_context().layers(SparseDeltaLayer))
    blocks = ffn_modules(pm.get_base_model())
    for mods in blocks.values():
        node_sets = []
        for n, role in [(n, "in") for n in mods["in"]] + [(n, "out") for n in mods["out"]]:
            w = layers[n].base_layer.weight
            mask = torch.zeros(w.numel(), dtype=torch.bool); mask[layers[n].sparse_index["default"]["weight"].long()] = True; mask = mask.view_as(w)
            conv = arch == "gpt2"
            axis = (0 if role == "in" else 1) ^ int(conv)
            full = mask.all(1 - axis)                                        # whole rows (axis 0) / columns (axis 1)
            assert torch.equal(full, mask.any(1 - axis))                      # nothing partial
            node_sets.append(full.nonzero().flatten())
        assert all(torch.equal(node_sets[0], s) for s in node_sets)
    d, dff = {"bert": (32, 37), "llama": (32, 37), "gpt2": (32, 128)}[arch]
    want = far_params(d, dff, 0.1, 2, bias=arch != "llama", gated=arch == "llama")
    assert pm.trainable_report().trainable == want

def test_far_without_known_feed_forward_names_is_refused():
    base = torch.nn.Sequential(torch.nn.Linear(4, 4))
    pm = get_peft_model(base, FARConfig())
    with pytest.raises(ValueError, match="no feed-forward names known"): pm.before_training([{"input": torch.randn(2, 4)}])

def test_sensitivity_is_the_sum_of_batch_squared_gradients():
    m = tiny_bert(); t = [m.bert.encoder.layer[0].intermediate.dense.weight]
    b1, b2 = {"input_ids": X, "labels": Y}, {"input_ids": X.flip(0), "labels": Y.flip(0)}
    s = sensitivity(m, [b1, b2], t, n_batches=2)[0]
    want = sum(torch.autograd.grad(m.eval()(**b).loss, t)[0] ** 2 for b in (b1, b2))
    assert torch.allclose(s, want, rtol=1e-5, atol=1e-12)

def test_spt_mixes_loras_and_entries_and_reloads_exactly(tmp_path):
    data = [{"input_ids": X, "labels": Y}]
    pm = get_peft_model(tiny_bert(), SPTConfig(density=0.2, r=1, sensitivity_batches=1))
    pm.before_training(data)
    ctx = pm.adapter_context()
    lora, sparse = [p for p, _ in ctx.layers(LoraLayer)], [p for p, _ in ctx.layers(SparseDeltaLayer)]
    assert lora and sparse
    _train(pm)
    pm.save_adapter(tmp_path)
    import json
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert sorted(cfg["lora_modules"]) == sorted(lora) and not any("base_layer" in k for k in cfg["pattern"])
    back = PeftModel.from_pretrained(tiny_bert(), tmp_path)
    with torch.no_grad(): assert torch.equal(back(input_ids=X).logits, pm(input_ids=X).logits)

def test_a_sparse_delta_under_another_adapters_lora_saves_under_the_modules_own_path(tmp_path):
    "FishMask on a model whose query already has a LoRA: its layer sits at `query.base_layer`, its pattern names `query`, and it loads into a fresh model."
    from peft_notes.methods.reparameterized.lora import LoraConfig
    pm = get_peft_model(tiny_bert(), LoraConfig(r=2), adapter_name="lora")
    pm.add_adapter("fish", FishMaskConfig(density=0.05, target_modules=["query"])); pm.set_adapter("fish")
    pm.before_training([{"input_ids": X, "labels": Y}])
    assert any(p.endswith(".base_layer") for p, _ in pm.adapter_context().layers(SparseDeltaLayer))
    _train(pm)
    pm.save_adapter(tmp_path, "fish")
    back = PeftModel.from_pretrained(tiny_bert(), tmp_path)
    with torch.no_grad(): assert torch.equal(back(input_ids=X).logits, pm(input_ids=X).logits)

# --- every method of the family: outside its mask, the base is bit-identical after fit -----------------------------------
import re as _re
from peft_notes.methods.selective.sparse import LTSFTConfig as _LT, ChildTuningConfig as _CT

FAMILY = {
    "lt_sft": (lambda: _LT(density=0.05, select_steps=3, select_lr=1e-2), "bert"),
    "child_tuning (task-free)": (lambda: _CT(density=0.5), "llama"),
    "child_tuning (task-driven)": (lambda: _CT(mode="task_driven", density=0.05), "bert"),
    "diff_pruning": (lambda: DiffPruningConfig(density=0.05, search_steps=3, search_lr=1e-2, gate_lr=0.3), "gpt2"),
    "far": (lambda: FARConfig(select_steps=3, select_lr=1e-2), "llama"),
    "spt": (lambda: SPTConfig(density=0.2, r=1, sensitivity_batches=1), "bert"),
    "xattn_tuning": (lambda: XattnTuningConfig(), "t5"),
    "ln_tuning": (lambda: LNTuningConfig(), "gpt2"),
    "partial": (lambda: PartialConfig(), "bert"),
    "bitfit": (lambda: BitFitConfig(), "gpt2")}

def _mask(pm):
    "{base state-dict key: bool mask of the entries the adapter may change}, from its layers."
    out = {}
    for path, layer in pm.adapter_context().layers():
        own = _re.sub(r"(\.base_layer)+$", "", path)
        if isinstance(layer, SparseDeltaLayer):
            for p, i in layer.sparse_index["default"].items():
                t = getattr(layer.base_layer, p); m = torch.zeros(t.numel(), dtype=torch.bool); m[i.long()] = True
                out[f"{own}.{p}"] = out.get(f"{own}.{p}", torch.zeros_like(m.view_as(t))) | m.view_as(t)
        elif isinstance(layer, LoraLayer): out[f"{own}.weight"] = torch.ones_like(layer.base_layer.weight, dtype=torch.bool)
        elif isinstance(layer, TensorDeltaLayer):
            for p in layer.base_delta["default"]: out[f"{own}.{p}"] = torch.ones_like(getattr(layer.base_layer, p), dtype=torch.bool)
    return out

@pytest.mark.parametrize("method", FAMILY)
def test_outside_its_mask_the_base_is_untouched_after_fit_and_merge_changes_only_the_mask(method):
    from torch.utils.data import DataLoader
    from peft_notes.train import fit
    make_cfg, arch = FAMILY[method]
    make = ENC_DEC["t5"] if arch == "t5" else MODELS[arch]
    x = _seq2seq_inputs(None) if arch == "t5" else {"input_ids": X}
    labels = x["decoder_input_ids"] if arch == "t5" else (Y if arch == "bert" else X)
    torch.manual_seed(0); base_sd = {k: v.clone() for k, v in make().state_dict().items()}
    torch.manual_seed(0); pm = get_peft_model(make().eval(), make_cfg())
    with torch.no_grad(): y0 = pm(**x).logits.clone()                    # nothing chosen or trained yet: the base
    fit(pm, DataLoader([{**x, "labels": labels}] * 4, batch_size=None), epochs=1, lr=5e-2, progress=False)
    pm.eval()
    strip = lambda sd: {k.replace(".base_layer", ""): v for k, v in sd.items() if not _re.search(r"\.(sparse_values|sparse_index|base_delta|lora_A|lora_B)\.", k)}
    now = strip(pm.get_base_model().state_dict())
    assert set(now) == set(base_sd) and all(torch.equal(now[k], base_sd[k]) for k in base_sd)   # the whole state dict, bit for bit
    with torch.no_grad(), pm.disable_adapter(): assert torch.equal(pm(**x).logits, y0)
    mask = _mask(pm)
    pm.merge_adapter()
    merged = strip(pm.get_base_model().state_dict())
    changed = {k: merged[k] != base_sd[k] for k in base_sd}
    assert any(c.any() for c in changed.values())
    assert all(not c.any() or (k in mask and not (c & ~mask[k]).any()) for k, c in changed.items())   # merged: only entries inside the mask moved
