"""The selective family (nbs/30_bitfit, nbs/31_structured): Hugging Face PEFT's `ln_tuning` as the oracle both ways,
the base bit-identical over its whole state dict after training, adapters of the family side by side, and bad input."""
import pytest, torch
import transformers as T
peft = pytest.importorskip("peft")  # dev extra; `make test` installs it, so this never skips there
from peft_notes.core import PeftModel, TensorDeltaLayer, get_peft_model
from peft_notes.interop import from_hf_peft, to_hf_peft
from peft_notes.models import tiny_bert, tiny_gpt2, tiny_llama
from peft_notes.methods.selective.bitfit import BitFitConfig
from peft_notes.methods.selective.structured import LNTuningConfig, PartialConfig, is_norm

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

def test_with_bitfit_on_the_same_norm():
    "BitFit and LN-tuning both train a LayerNorm's shift: each holds its own delta, and both together add."
    pm = get_peft_model(tiny_bert(), BitFitConfig(), adapter_name="bias")
    pm.add_adapter("ln", LNTuningConfig())
    layer = pm.base_model.bert.embeddings.LayerNorm
    assert set(layer.base_delta) == {"bias", "ln"} and set(layer.base_delta["bias"]) == {"bias"} and set(layer.base_delta["ln"]) == {"weight", "bias"}
