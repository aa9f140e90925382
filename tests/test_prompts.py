"""The inputs kind, proven by prompt tuning and prefix tuning: Hugging Face PEFT as the oracle both ways on causal LMs
(forward logits), generation with a KV cache on left-padded batches against each prompt alone, encoder classification
on the shipped MiniLM, composition with a layer method, and the errors that name what is wrong."""
import json
import pytest, torch
import transformers as T
peft = pytest.importorskip("peft")  # dev extra; `make test` installs it, so this never skips there
from peft_notes.core import PeftModel, get_peft_model
from peft_notes.interop import from_hf_peft, to_hf_peft
from peft_notes.models import load_minilm, minilm_path, tiny_bert, tiny_gpt2, tiny_llama
from peft_notes.testing import default_inputs
from peft_notes.methods.additive.prompts import PrefixTuningConfig, PromptTuningConfig, prefix_tuning_params
from peft_notes.reparam import LoraConfig
from peft_notes.testing import check_method
from _prompt_helpers import X, check_generate_left_padded, train

OURS = {"prompt": lambda: PromptTuningConfig(num_virtual_tokens=5), "prefix": lambda: PrefixTuningConfig(num_virtual_tokens=5)}
THEIRS = {"prompt": lambda: peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5),
          "prefix": lambda: peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5),
          "prefix-mlp": lambda: peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, prefix_projection=True, encoder_hidden_size=16)}
MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2}

def _their_table(pm):
    "The tensor PEFT's model holds for the prompt (its embedding table; with the MLP, what the MLP makes)."
    return pm.get_prompt_embedding_to_save("default")

@pytest.mark.parametrize("arch", MODELS)
@pytest.mark.parametrize("kind", OURS)
def test_ours_loads_in_peft(kind, arch, tmp_path):
    make = MODELS[arch]
    ours = train(get_peft_model(make(), OURS[kind]()))
    to_hf_peft(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(make(), tmp_path).eval()
    mine = ours.adapter_state_dict()["prompt_embeddings"]
    assert torch.equal(_their_table(theirs), mine.detach())           # the one tensor arrived, trained
    with torch.no_grad(): torch.testing.assert_close(theirs(**X).logits, ours(**X).logits, atol=1e-5, rtol=0)

@pytest.mark.parametrize("arch", MODELS)
@pytest.mark.parametrize("kind", THEIRS)
def test_peft_loads_here(kind, arch, tmp_path):
    make = MODELS[arch]
    theirs = train(peft.get_peft_model(make(), THEIRS[kind]()))
    theirs.save_pretrained(tmp_path)
    ours = from_hf_peft(make(), tmp_path)
    assert torch.equal(ours.adapter_state_dict()["prompt_embeddings"], _their_table(theirs))
    with torch.no_grad(): torch.testing.assert_close(ours(**X).logits, theirs(**X).logits, atol=1e-5, rtol=0)

@pytest.mark.parametrize("arch", MODELS)
@pytest.mark.parametrize("kind", OURS)
def test_generate_left_padded_equals_each_prompt_alone(kind, arch):
    check_generate_left_padded(train(get_peft_model(MODELS[arch](), OURS[kind]())))

def test_generate_keeps_max_length_and_beams_for_the_text():
    pm = train(get_peft_model(tiny_llama(), PrefixTuningConfig(num_virtual_tokens=5)))
    ids = X["input_ids"][:2]
    with torch.no_grad():
        assert pm.generate(ids, max_length=12, do_sample=False, pad_token_id=0).shape == (2, 12)   # max_length counts the user's ids only
        beams = pm.generate(ids, max_new_tokens=3, num_beams=3, num_return_sequences=2, do_sample=False, pad_token_id=0)
    assert beams.shape == (4, 12)

def test_minilm_classification_prompt_from_text_and_prefix():
    "Encoder classification on the shipped pretrained MiniLM: the text init reads its local tokenizer; both methods train."
    path = str(minilm_path())
    text = PromptTuningConfig(num_virtual_tokens=6, prompt_init="text", prompt_init_text="classify the news", tokenizer_name_or_path=path)
    model, tok = load_minilm(num_labels=3)
    pm = get_peft_model(model, text)
    ids = tok("classify the news", add_special_tokens=False)["input_ids"]
    want = pm.get_input_embeddings().weight[torch.tensor((ids * 6)[:6])]
    assert torch.equal(pm.adapter_inputs["default"].prompt_embeddings.detach(), want)
    batch = tok(["stocks fell sharply", "the team won the cup"], return_tensors="pt", padding=True)
    make_inputs = lambda m: dict(batch)
    for cfg in (lambda: text, lambda: PrefixTuningConfig(num_virtual_tokens=6)):
        r = check_method(cfg, lambda: load_minilm(num_labels=3)[0], make_inputs, identity_at_init=False, lr=5e-2, steps=8)
        assert r["loss_after"] < r["loss_before"]
    n = PrefixTuningConfig(num_virtual_tokens=6)
    assert get_peft_model(load_minilm(num_labels=3)[0], n).trainable_report().trainable == prefix_tuning_params(6, 6, 384)

def test_t5_prompt_tuning_prompts_the_encoder_and_generates():
    t5 = lambda: T.T5ForConditionalGeneration(T.T5Config(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, vocab_size=99, decoder_start_token_id=0))
    torch.manual_seed(0); pm = get_peft_model(t5(), PromptTuningConfig(num_virtual_tokens=4)).eval()
    ids, labels = X["input_ids"], X["input_ids"][:, :5].contiguous()
    with torch.no_grad():
        out = pm(input_ids=ids, attention_mask=X["attention_mask"], labels=labels)
        assert out.logits.shape == (3, 5, 99)            # the decoder's labels are not extended
        enc = pm.adapter_inputs["default"].prepare(pm.base_model, {"input_ids": ids, "attention_mask": X["attention_mask"]})
        ref = pm.base_model(**enc, labels=labels)
        torch.testing.assert_close(out.logits, ref.logits, atol=0, rtol=0)
        gen = pm.generate(input_ids=ids, attention_mask=X["attention_mask"], max_new_tokens=4, do_sample=False)
    assert gen.shape[0] == 3

def test_prompt_composes_with_lora_on_the_layers():
    "Prompt and LoRA active together: merging the LoRA leaves the output as it was; disabling gives the base."
    torch.manual_seed(0); pm = get_peft_model(tiny_llama(), LoraConfig(r=2, init_lora_weights=False), "lora")
    pm.add_adapter("prompt", PromptTuningConfig(num_virtual_tokens=3)); pm.set_adapter(["lora", "prompt"])
    trains = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trains) and "adapter_inputs.prompt.prompt_embeddings" in trains
    x = X["input_ids"]
    with torch.no_grad():
        both = pm(x).logits
        pm.set_adapter("prompt"); prompt_only = pm(x).logits; pm.set_adapter(["lora", "prompt"])
        assert not torch.allclose(both, prompt_only)
        pm.merge_adapter(["lora"]); torch.testing.assert_close(pm(x).logits, both, atol=1e-5, rtol=0); pm.unmerge_adapter()
        with pm.disable_adapter(): assert pm(x).logits.shape == (3, 9, 99)

def test_causal_lm_loss_is_the_texts():
    "Labels get the prompt's positions as ignored: the loss is the text's, its first token predicted from the prompt's last position (as PEFT)."
    torch.manual_seed(0); pm = get_peft_model(tiny_llama(), PromptTuningConfig(num_virtual_tokens=4)).eval()
    x = X["input_ids"]
    with torch.no_grad():
        out = pm(x, labels=x)
        z = out.logits[:, 3:-1]                          # the last prompt position predicts x[0], each text position the next
        want = torch.nn.functional.cross_entropy(z.reshape(-1, 99), x.reshape(-1))
    torch.testing.assert_close(out.loss, want)

def test_prefix_mlp_trains_the_mlp_and_saves_only_the_table(tmp_path):
    torch.manual_seed(0); pm = get_peft_model(tiny_llama(), PrefixTuningConfig(num_virtual_tokens=4, prefix_projection=True, encoder_hidden_size=16))
    trains = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert trains == {"adapter_inputs.default.embedding", *(f"adapter_inputs.default.mlp.{i}.{w}" for i in (0, 2) for w in ("weight", "bias"))}
    train(pm)
    pm.save_adapter(tmp_path)
    cfg = PeftModel.from_pretrained(tiny_llama(), tmp_path).peft_config["default"]
    assert cfg.prefix_projection is False
    from safetensors import safe_open
    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as f: assert list(f.keys()) == ["prompt_embeddings"]
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path, is_trainable=True)
    with torch.no_grad(): torch.testing.assert_close(loaded(**X).logits, pm(**X).logits, atol=1e-6, rtol=0)
    assert loaded.trainable_report().trainable == prefix_tuning_params(4, 2, 16)   # the table itself trains now
    with pytest.raises(ValueError, match="computes prompt_embeddings"): pm.load_adapter_weights(tmp_path)

def test_errors_name_the_problem():
    pm = get_peft_model(tiny_llama(), PromptTuningConfig(num_virtual_tokens=3)).eval()
    x = X["input_ids"]
    with pytest.raises(ValueError, match="position_ids with prompt tuning"): pm(x, position_ids=torch.arange(9)[None])
    with pytest.raises(ValueError, match="adapter_names with a prompt/prefix adapter"): pm(x, adapter_names=["default", "__base__", "default"])
    with pytest.raises(ValueError, match="needs input_ids"): pm.generate(inputs_embeds=torch.randn(3, 9, 32), max_new_tokens=2)
    with pytest.raises(ValueError, match="num_virtual_tokens must be at least 1"): PromptTuningConfig(num_virtual_tokens=0)
    with pytest.raises(ValueError, match="needs prompt_init_text and tokenizer_name_or_path"): PromptTuningConfig(prompt_init="text")
    with pytest.raises(ValueError, match="choose one"): PrefixTuningConfig(prefix_projection=True, prefix_init="vocab")
    with pytest.raises(TypeError, match="merged"): pm.merge_adapter()
    pf = get_peft_model(tiny_llama(), PrefixTuningConfig(num_virtual_tokens=3)).eval()
    with pytest.raises(ValueError, match="its own KV cache"): pf(x, cache=T.DynamicCache())

def _gpt2_cls():
    "A tiny GPT-2 with a classification head, the same weights at every call."
    torch.manual_seed(0)
    return T.GPT2ForSequenceClassification(T.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=99, n_positions=64, num_labels=2, pad_token_id=0)).eval()

@pytest.mark.parametrize("method,make", [("prompt_tuning", tiny_bert), ("p_tuning", tiny_bert), ("prefix_tuning", _gpt2_cls)])
def test_a_trained_classification_head_travels_with_a_prompt_method_both_ways(method, make, tmp_path):
    "PEFT runs prompt methods on the task model itself: the head is `base_model.classifier`/`score` in its file (not `base_model.model.…`). Ours loads in PEFT's task model with the same logits, and PEFT's own save loads here, the head with it (the issue's KeyError: 'base_model.classifier.weight')."
    from peft_notes.core import list_methods
    torch.manual_seed(0)
    ours = get_peft_model(make(), list_methods()[method](num_virtual_tokens=4, modules_to_save=[head := "score" if make is _gpt2_cls else "classifier"]))
    with torch.no_grad():
        for p in ours.parameters():
            if p.requires_grad: p.add_(torch.randn_like(p) * 0.1)
    x = default_inputs(ours); ours.eval()
    with torch.no_grad(): y = ours(**x).logits
    to_hf_peft(ours, tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    from safetensors.torch import load_file
    assert f"base_model.{head}.weight" in load_file(str(tmp_path / "ours" / "adapter_model.safetensors"))
    if method == "prefix_tuning":   # PEFT 0.21 looks for `past_key_values` in a classifier's forward, which transformers 5 names `cache`: our file read back by ours
        back = from_hf_peft(make(), tmp_path / "ours").eval()
    else:
        theirs = peft.PeftModel.from_pretrained(make(), tmp_path / "ours").eval()
        with torch.no_grad(): torch.testing.assert_close(theirs(**x).logits, y, atol=1e-6, rtol=0)
        theirs.save_pretrained(tmp_path / "theirs")
        back = from_hf_peft(make(), tmp_path / "theirs").eval()
    assert back.peft_config["default"].modules_to_save == [head]
    with torch.no_grad(): torch.testing.assert_close(back(**x).logits, y, atol=1e-6, rtol=0)
