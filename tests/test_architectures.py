"""`get_peft_model(model, LoraConfig())` works with no target argument on the common architectures (as PEFT's defaults)."""
import pytest, torch
import transformers as T
from peft_notes.core import AdapterLayer, get_peft_model
from peft_notes.reparam import LoraConfig

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=99, max_position_embeddings=64)
ARCHS = {
    "bert": lambda: T.BertForSequenceClassification(T.BertConfig(**SMALL)),
    "roberta": lambda: T.RobertaForSequenceClassification(T.RobertaConfig(**SMALL, pad_token_id=1)),
    "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=99, n_positions=64)),
    "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(**SMALL)),
    "mistral": lambda: T.MistralForCausalLM(T.MistralConfig(**SMALL, num_key_value_heads=2)),
    "qwen2": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**SMALL, num_key_value_heads=2)),
    "opt": lambda: T.OPTForCausalLM(T.OPTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=37, vocab_size=99,
                                                max_position_embeddings=64, word_embed_proj_dim=32)),
    "vit": lambda: T.ViTForImageClassification(T.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                                                           image_size=16, patch_size=4, num_labels=3)),
    "t5": lambda: T.T5ForConditionalGeneration(T.T5Config(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, vocab_size=99)),
}

def _inputs(name):
    if name == "vit": return {"pixel_values": torch.randn(2, 3, 16, 16)}
    ids = torch.randint(2, 99, (2, 7))
    return {"input_ids": ids, "decoder_input_ids": ids} if name == "t5" else {"input_ids": ids}

@pytest.mark.parametrize("name", ARCHS)
def test_default_targets(name):
    torch.manual_seed(0); base = ARCHS[name]().eval()
    x = _inputs(name)
    with torch.no_grad(): y0 = base(**x).logits.clone()
    pm = get_peft_model(base, LoraConfig(r=2, init_lora_weights=False))
    wrapped = [n for n, m in pm.base_model.named_modules() if isinstance(m, AdapterLayer)]
    assert len(wrapped) >= 2 * (2 if name != "gpt2" else 1), wrapped
    with torch.no_grad():
        y = pm(**x).logits
        assert not torch.allclose(y, y0)            # the adapters are in the computation
        with pm.disable_adapter(): assert torch.equal(pm(**x).logits, y0)

NO_BIAS = {"llama", "mistral", "t5"}   # bias-free linear layers and norms: BitFit has nothing to train there

REFUSED = {("bitfit", n): "owns a bias" for n in NO_BIAS} | {
    ("prompt_tuning", "vit"): "no token embedding table", ("prefix_tuning", "vit"): "no token embedding table",
    ("prefix_tuning", "t5"): "encoder-decoder",
    ("p_tuning", "vit"): "no token embedding table", ("xprompt", "vit"): "no token embedding table",
    ("p_tuning_v2", "vit"): "no token embedding table", ("apt", "vit"): "no token embedding table",
    ("p_tuning_v2", "t5"): "encoder-decoder", ("apt", "t5"): "encoder-decoder",
    ("pasta", "bert"): "names no special token ids", ("pasta", "vit"): "names no special token ids", ("pasta", "qwen2"): "names no special token ids",   # these tiny configs name none: pass them
    ("pasta", "t5"): "no default target_modules for model type 't5'"} | {
    ("llama_adapter", n): "LLaMA-style attention" for n in ("bert", "roberta", "gpt2", "opt", "vit", "t5")} | {
    ("xattn_tuning", n): "needs an encoder–decoder" for n in ARCHS if n != "t5"} | {
    (m, "vit"): "no token embedding table" for m in ("unipelt", "mam")} | {(m, "t5"): "encoder-decoder" for m in ("unipelt", "mam", "noah")} | {
    ("s4", n): "owns a bias" for n in NO_BIAS} | {("s4", "vit"): "no token embedding table"} | {   # its default uses BitFit and a prefix
    (m, n): "needs a vision transformer" for m in ("vpt", "vpt_deep", "adaptformer", "convpass", "fact") for n in ARCHS if n != "vit"} | {
    ("fact", "vit"): "cuts weights into 32×32 blocks"} | {(m, n): "two-tower" for m in ("coop", "cocoop", "clip_adapter", "tip_adapter") for n in ARCHS} | {
    (m, n): "text-to-image model|diffusers UNet" for m in ("textual_inversion", "dreambooth", "custom_diffusion", "svdiff", "controlnet", "t2i_adapter", "ip_adapter") for n in ARCHS}   # this tiny ViT's 37-wide MLP is no whole number of blocks (tests/test_vision.py runs FacT on one that is)
# NOAH runs on the ViT: its prompt module is VPT's there (a length per layer), as in its paper
INPUTS_KIND = {"prompt_tuning", "prefix_tuning", "p_tuning", "p_tuning_v2", "xprompt", "apt", "unipelt", "mam", "s4", "noah", "vpt", "vpt_deep"}   # they change the inputs (the hybrids through their prefix): something new to read from the start

@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("method", ["lora", "dora", "adalora", "dylora", "sora", "vera", "loha", "lokr", "ia3", "bitfit", "prompt_tuning", "prefix_tuning",
                                    "houlsby", "pfeiffer", "residual_adapter", "parallel_adapter", "compacter",
                                    "p_tuning", "p_tuning_v2", "xprompt", "apt", "llama_adapter", "ssf", "mov", "pasta", "ln_tuning", "partial", "fish_mask", "lt_sft", "child_tuning", "xattn_tuning", "diff_pruning", "far", "spt",
                                    "unipelt", "mam", "propetl", "autopeft", "s4", "noah", "vpt", "vpt_deep", "adaptformer", "convpass", "fact", "coop", "cocoop", "clip_adapter", "tip_adapter",
                                    "textual_inversion", "dreambooth", "custom_diffusion", "svdiff", "controlnet", "t2i_adapter", "ip_adapter"])
def test_every_method_with_its_defaults(method, name):
    "list_methods()[m]() needs no argument on the common architectures, and disabling gives the base back."
    from peft_notes.core import list_methods
    torch.manual_seed(0); base = ARCHS[name]().eval()
    x = _inputs(name)
    with torch.no_grad(): y0 = base(**x).logits.clone()
    if (method, name) in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[method, name]): get_peft_model(base, list_methods()[method]())
        return
    pm = get_peft_model(base, list_methods()[method]())
    if method in INPUTS_KIND:
        with torch.no_grad():
            y = pm(**x).logits
            assert y.isfinite().all() and not torch.allclose(y[:, -y0.shape[1]:] if y.shape != y0.shape else y, y0)
            with pm.disable_adapter(): assert torch.equal(pm(**x).logits, y0)
        return
    if method in ("fish_mask", "lt_sft", "diff_pruning", "far", "spt"):   # they choose their entries from data
        with torch.no_grad(): assert torch.equal(pm(**x).logits, y0)     # nothing chosen yet
        labels = x.get("decoder_input_ids", x.get("input_ids")) if name not in ("bert", "roberta", "vit") else torch.zeros(2, dtype=torch.long)
        pm.before_training([{**x, "labels": labels}])
    assert len(pm.adapter_context().layers()) >= (1 if method in ("fish_mask", "lt_sft", "diff_pruning", "far", "spt") else 2)   # 0.5% of a tiny model may all lie in one tensor
    with torch.no_grad():
        if method != "diff_pruning": torch.testing.assert_close(pm(**x).logits, y0, atol=1e-6, rtol=0)   # every method starts at the base (diff pruning's second stage at its first stage's δ̂)
        with pm.disable_adapter(): assert torch.equal(pm(**x).logits, y0)
