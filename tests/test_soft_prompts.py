"""The rest of the soft prompts (P-tuning, P-tuning v2, APT, XPrompt) and LLaMA-Adapter: Hugging Face PEFT as the oracle
both ways where PEFT has the method (and the export of those it has not, as the PEFT method they reduce to), greedy
generation with a KV cache on left-padded batches against each prompt alone, parameter counts by formula, and bad input."""
import pytest, torch
import transformers as T
peft = pytest.importorskip("peft")  # dev extra; `make test` installs it, so this never skips there
from safetensors import safe_open
from peft_notes.core import PeftModel, get_peft_model
from peft_notes.interop import from_hf_peft, to_hf_peft
from peft_notes.models import load_minilm, tiny_bert, tiny_gpt2, tiny_llama
from peft_notes.methods.additive.prompts import PrefixTuningConfig, PromptTuningConfig, prefix_tuning_params
from peft_notes.methods.additive.soft_prompts import (APTConfig, LlamaAdapterConfig, PTuningConfig, PTuningV2Config, XPromptConfig,
                                                      llama_adapter_params, p_tuning_params, xprompt_importance, xprompt_prune)
from _prompt_helpers import X, check_generate_left_padded, gap, train

def tiny_mistral(seed=0):
    torch.manual_seed(seed)
    return T.MistralForCausalLM(T.MistralConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                intermediate_size=37, max_position_embeddings=64, pad_token_id=0)).eval()

# --- the oracle, both ways ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("enc", ["MLP", "LSTM"])
def test_p_tuning_both_ways(enc, make, tmp_path):
    ours = train(get_peft_model(make(), PTuningConfig(num_virtual_tokens=5, encoder_reparameterization_type=enc, encoder_hidden_size=16)))
    to_hf_peft(ours, tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(make(), tmp_path / "ours").eval()
    assert torch.equal(theirs.prompt_encoder["default"].embedding.weight, ours.adapter_state_dict()["prompt_embeddings"].detach())   # the rows arrived
    assert gap(theirs, ours) <= 1e-5
    theirs = train(peft.get_peft_model(make(), peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, encoder_hidden_size=16,
                                                                         encoder_reparameterization_type=enc)))
    theirs.save_pretrained(tmp_path / "theirs")
    back = from_hf_peft(make(), tmp_path / "theirs")
    assert back.peft_config["default"].method == "p_tuning" and gap(back, theirs) <= 1e-5

@pytest.mark.parametrize("make", [tiny_llama, tiny_mistral], ids=["llama", "mistral"])
def test_llama_adapter_both_ways(make, tmp_path):
    ours = get_peft_model(make(), LlamaAdapterConfig(adapter_len=4, adapter_layers=1))
    with torch.no_grad():
        y0 = ours(**X).logits.clone()
        with ours.disable_adapter(): assert torch.equal(ours(**X).logits, y0)    # zero gate: the base, bit for bit
        for n, p in ours.named_parameters():
            if "adaption_gate" in n: p.fill_(0.7)                                  # open the gate so the prompt counts
    train(ours)
    assert [p for p, _ in ours.adapter_context().layers()] == ["model.layers.1.self_attn"]   # the top layer only
    to_hf_peft(ours, tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(make(), tmp_path / "ours").eval()
    assert gap(theirs, ours) <= 1e-5 and gap(theirs, ours) < (ours(**X).logits - y0).abs().max().item()
    theirs = peft.get_peft_model(make(), peft.AdaptionPromptConfig(task_type="CAUSAL_LM", adapter_len=4, adapter_layers=2))
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            if "adaption_gate" in n: p.fill_(0.5)
    train(theirs)
    theirs.save_pretrained(tmp_path / "theirs")
    back = from_hf_peft(make(), tmp_path / "theirs")
    assert len(back.adapter_context().layers()) == 2 and gap(back, theirs) <= 1e-5

@pytest.mark.parametrize("cfg", [lambda: PTuningV2Config(num_virtual_tokens=5), lambda: APTConfig(num_virtual_tokens=5)], ids=["p_tuning_v2", "apt"])
def test_deep_prompts_load_in_peft_as_prefix_tuning(cfg, tmp_path):
    "P-tuning v2 is prefix tuning without the MLP; APT's gates fold into the table. PEFT computes the same outputs."
    ours = train(get_peft_model(tiny_llama(), cfg()))
    to_hf_peft(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path).eval()
    assert theirs.peft_config["default"].peft_type == "PREFIX_TUNING" and gap(theirs, ours) <= 1e-5

def test_pruned_xprompt_loads_in_peft_as_prompt_tuning(tmp_path):
    ours = train(get_peft_model(tiny_llama(), XPromptConfig(num_virtual_tokens=6, pieces=4)))
    xprompt_prune(ours, [dict(X, labels=X["input_ids"])], token_keep=0.5, piece_keep=0.5)
    to_hf_peft(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path).eval()
    assert theirs.peft_config["default"].peft_type == "PROMPT_TUNING" and gap(theirs, ours) <= 1e-5

# --- generation --------------------------------------------------------------------------------------------------

def _open_gates(pm):
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "adaption_gate" in n: p.fill_(1.0)
    return pm

GEN = {"p_tuning": lambda: PTuningConfig(num_virtual_tokens=5, encoder_hidden_size=16), "p_tuning_v2": lambda: PTuningV2Config(num_virtual_tokens=5),
       "apt": lambda: APTConfig(num_virtual_tokens=5), "xprompt": lambda: XPromptConfig(num_virtual_tokens=5, pieces=4),
       "llama_adapter": lambda: LlamaAdapterConfig(adapter_len=4)}

PAIRS = [(k, a) for k in GEN if k != "llama_adapter" for a in ("llama", "gpt2")] + [("llama_adapter", "llama"), ("llama_adapter", "mistral")]

@pytest.mark.parametrize("kind,arch", PAIRS)
def test_generate_left_padded_equals_each_prompt_alone(kind, arch):
    make = {"llama": tiny_llama, "gpt2": tiny_gpt2, "mistral": tiny_mistral}[arch]
    check_generate_left_padded(train(_open_gates(get_peft_model(make(), GEN[kind]()))))

# --- an encoder: the pretrained MiniLM on real sentences ----------------------------------------------------------

@pytest.mark.parametrize("kind", ["p_tuning", "p_tuning_v2", "apt", "xprompt"])
def test_minilm_classification_trains(kind):
    from peft_notes.core import list_methods
    from peft_notes.testing import check_method
    _, tok = load_minilm(num_labels=3)
    batch = dict(tok(["stocks fell sharply", "the team won the cup", "a new phone was launched"], return_tensors="pt", padding=True))
    cfg = lambda: list_methods()[kind](num_virtual_tokens=6)
    r = check_method(cfg, lambda: load_minilm(num_labels=3)[0], lambda m: dict(batch), identity_at_init=False, lr=1e-2 if kind == "p_tuning" else 5e-2, steps=8)
    assert r["loss_after"] < r["loss_before"] - 0.05       # a real drop, not rounding

# --- counts by formula, on the shipped MiniLM ---------------------------------------------------------------------

def test_counts_by_formula_on_minilm():
    base = lambda: load_minilm(num_labels=2)[0]
    for enc in ("MLP", "LSTM"):
        pm = get_peft_model(base(), PTuningConfig(num_virtual_tokens=20, encoder_reparameterization_type=enc, encoder_hidden_size=128))
        assert pm.trainable_report().trainable == p_tuning_params(20, 384, 128, enc)
    assert get_peft_model(base(), PTuningV2Config()).trainable_report().trainable == prefix_tuning_params(20, 6, 384)
    assert get_peft_model(base(), APTConfig()).trainable_report().trainable == prefix_tuning_params(20, 6, 384) + 6 + 6 * 20
    assert get_peft_model(base(), XPromptConfig()).trainable_report().trainable == 20 * 384
    assert get_peft_model(tiny_llama(), LlamaAdapterConfig()).trainable_report().trainable == llama_adapter_params(2, 10, 32)
    assert llama_adapter_params(30, 10, 4096) == 1_228_830      # LLaMA-7B, the paper's "1.2M" (30 · 10 · 4096 + 30 gates)

def test_p_tuning_saves_rows_and_reloads_them_trainable(tmp_path):
    pm = train(get_peft_model(tiny_llama(), PTuningConfig(num_virtual_tokens=4, encoder_reparameterization_type="LSTM", encoder_hidden_size=8)))
    pm.save_adapter(tmp_path)
    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as f: assert list(f.keys()) == ["prompt_embeddings"]
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path, is_trainable=True)
    assert loaded.peft_config["default"].reparameterize is False and loaded.trainable_report().trainable == 4 * 32
    assert gap(loaded, pm) <= 1e-6

# --- what the methods promise -------------------------------------------------------------------------------------

def test_xprompt_prunes_by_importance_and_retraining_keeps_the_pruned_out(tmp_path):
    pm = train(get_peft_model(tiny_llama(), XPromptConfig(num_virtual_tokens=8, pieces=4)))
    batch = [dict(X, labels=X["input_ids"])]
    p = pm.adapter_inputs["default"]
    s = xprompt_importance(pm, batch)
    loss = lambda: pm(**batch[0]).loss.item()
    base_loss = loss()
    def without(j):                                # the loss with token j's mask at 0
        with torch.no_grad(): p.token_mask[j] = 0; l = loss(); p.token_mask[j] = 1
        return l
    lo, hi = int(s.argmin()), int(s.argmax())
    assert abs(without(lo) - base_loss) < abs(without(hi) - base_loss)   # the score ranks tokens by what removing them costs
    kept = xprompt_prune(pm, batch, token_keep=0.5, piece_keep=0.5)
    assert kept == {"tokens": 4, "pieces": 8}
    dead = p.token_mask == 0
    assert (p.rows()[dead] == 0).all() and (p.piece_mask[dead] == 0).all()
    train(pm)                                      # re-train the survivors
    assert (p.rows()[dead] == 0).all()
    pm.save_adapter(tmp_path)
    again = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    assert torch.equal(again.adapter_inputs["default"].token_mask, p.token_mask) and gap(again, pm) == 0

def test_apt_gates_scale_each_layer_and_token():
    pm = get_peft_model(tiny_llama(), APTConfig(num_virtual_tokens=3))
    g = pm.adapter_inputs["default"]
    with torch.no_grad(): g.layer_gate[1] = 0; g.token_gate[0, 2] = -1e4
    t = g.table().view(3, 2, 2, -1)                # (l, L, key/value, H·d_h)
    assert (t[:, 1] == 0).all() and (t[2, 0] == 0).all() and (t[:2, 0] != 0).any()

# --- bad input: a clear error, the model unchanged ----------------------------------------------------------------

def _unchanged(model, fn, match):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mods = [type(m) for m in model.modules()]
    with pytest.raises(ValueError, match=match): fn(model)
    assert [type(m) for m in model.modules()] == mods and all(torch.equal(before[k], v) for k, v in model.state_dict().items())

def test_bad_input_is_refused_and_the_model_is_unchanged():
    for cfg in (PromptTuningConfig, PTuningConfig, XPromptConfig, PrefixTuningConfig, PTuningV2Config, APTConfig):
        _unchanged(tiny_llama(), lambda m: get_peft_model(m, cfg(num_virtual_tokens=65)), "65 virtual tokens needs 65 positions; the model has 64")
    pm = get_peft_model(tiny_gpt2(), PTuningConfig(num_virtual_tokens=60))
    with pytest.raises(ValueError, match="60 virtual tokens plus 9 text tokens needs 69 positions"): pm(**X)
    pf = get_peft_model(tiny_gpt2(), PTuningV2Config(num_virtual_tokens=60))
    with pytest.raises(ValueError, match="prefix of 60 virtual tokens plus 9 text tokens"): pf(**X)
    for make in (tiny_bert, tiny_gpt2):
        _unchanged(make(), lambda m: get_peft_model(m, LlamaAdapterConfig()), "LLaMA-style attention")
    _unchanged(tiny_llama(), lambda m: get_peft_model(m, LlamaAdapterConfig(adapter_layers=3)), "adapter_layers=3, but the model has 2")
    _unchanged(tiny_llama(), lambda m: get_peft_model(m, XPromptConfig(pieces=5)), "5 must divide 32")
    with pytest.raises(TypeError, match="must be one of 'MLP', 'LSTM', got 'GRU'"): PTuningConfig(encoder_reparameterization_type="GRU")
    with pytest.raises(ValueError, match="prompt encoder makes the rows"): PTuningConfig(prompt_init="random")
    with pytest.raises(ValueError, match="drops the MLP"): PTuningV2Config(prefix_projection=True)
    with pytest.raises(ValueError, match="adapter_len must be at least 1"): LlamaAdapterConfig(adapter_len=0)
    pm = get_peft_model(tiny_llama(), XPromptConfig(num_virtual_tokens=4, pieces=4))
    with pytest.raises(ValueError, match="shares in"): xprompt_prune(pm, [dict(X, labels=X["input_ids"])], token_keep=0)
    with pytest.raises(TypeError, match="cannot be merged"): get_peft_model(tiny_llama(), LlamaAdapterConfig()).merge_adapter()
