"""The shared matrix (`check_method`, mixed batches included) for every registered method on BERT, LLaMA and GPT-2."""
import pytest
from peft_notes.core import list_methods
from peft_notes.models import tiny_bert, tiny_gpt2, tiny_llama
from peft_notes.core import get_peft_model, method_kinds
from peft_notes.testing import check_method, default_inputs
import transformers as T

def tiny_qwen2():
    "A LLaMA-shaped decoder whose q, k, v projections have biases (for BitFit: LLaMA has none)."
    return T.Qwen2ForCausalLM(T.Qwen2Config(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                            intermediate_size=37, max_position_embeddings=64)).eval()

METHODS = ["lora", "dora", "adalora", "dylora", "sora", "vera", "loha", "lokr", "ia3", "bitfit", "prompt_tuning", "prefix_tuning",
           "houlsby", "pfeiffer", "residual_adapter", "parallel_adapter", "compacter",
           "p_tuning", "p_tuning_v2", "xprompt", "apt", "llama_adapter", "ssf", "mov", "pasta", "ln_tuning", "partial", "fish_mask", "lt_sft", "child_tuning", "xattn_tuning", "diff_pruning", "far", "spt",
           "unipelt", "mam", "propetl", "autopeft", "s4", "noah", "qlora", "loftq", "qa_lora", "qdylora", "peqa", "ir_qlora", "bitdelta", "lq_lora",
           "adapter_fusion", "spot", "attempt", "mpt", "adamix", "moelora", "vpt", "vpt_deep", "adaptformer", "convpass", "fact", "coop", "cocoop", "clip_adapter", "tip_adapter",
           "textual_inversion", "dreambooth", "custom_diffusion", "svdiff", "controlnet", "t2i_adapter", "ip_adapter"]
VISION = {"vpt", "vpt_deep", "adaptformer", "convpass", "fact"}
VL = {"coop", "cocoop", "clip_adapter", "tip_adapter"}   # two-tower methods: refused here by name; their matrix runs on two two-tower models in tests/test_vision.py   # vision methods: refused here by name on text models; their matrix runs on two ViTs in tests/test_vision.py
DIFFUSION = {"textual_inversion", "dreambooth", "custom_diffusion", "svdiff", "controlnet", "t2i_adapter", "ip_adapter"}   # text-to-image methods: refused here by name; their matrix runs on a tiny text-to-image model in tests/test_diffusion.py and tests/test_diffusion_control.py
LR = {"diff_pruning": 5e-2, "far": 5e-2, "spt": 5e-2, "ln_tuning": 5e-2, "partial": 5e-2, "fish_mask": 5e-2, "lt_sft": 5e-2, "ia3": 5e-2, "bitfit": 5e-2, "prompt_tuning": 5e-2, "prefix_tuning": 5e-2, "p_tuning": 1e-2, "p_tuning_v2": 5e-2, "xprompt": 5e-2,
      "apt": 5e-2, "spot": 5e-2, "attempt": 5e-2, "mpt": 5e-2, "ssf": 5e-2, "mov": 5e-2, "pasta": 5e-2}

def tiny_t5():
    "An encoder–decoder, for the method that adapts only the cross-attention."
    return T.T5ForConditionalGeneration(T.T5Config(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, vocab_size=99, decoder_start_token_id=0)).eval()

def _with_specials(model):
    "PASTA adapts the special tokens: put one at each end of every row (ids 1 and 2, the ones its config names below)."
    x = default_inputs(model); x["input_ids"][:, 0] = 1; x["input_ids"][:, -1] = 2; return x

# the pooled position of a random tiny BERT is the prompt's first row, nearly the same for every example: P-tuning's
# encoder moves the loss there only at a small step, with the head trained (as P-tuning on NLU does). The encoder
# case that means something, the pretrained MiniLM on real sentences, is in tests/test_soft_prompts.py.
LR_ARCH = {("p_tuning", "bert"): 1e-3}
CONFIG = {("p_tuning", "bert"): lambda: list_methods()["p_tuning"](modules_to_save=["classifier"]),
          **{("pasta", a): lambda: list_methods()["pasta"](special_token_ids=[1, 2]) for a in ("bert", "llama", "gpt2")},
          **{("fish_mask", a): lambda: list_methods()["fish_mask"](density=0.05) for a in ("bert", "llama", "gpt2")},
          **{("diff_pruning", a): lambda: list_methods()["diff_pruning"](density=0.05, search_steps=5, search_lr=1e-2, gate_lr=0.3) for a in ("bert", "llama", "gpt2")},
          **{("far", a): lambda: list_methods()["far"](select_steps=5, select_lr=1e-2) for a in ("bert", "llama", "gpt2")},
          **{("spt", a): lambda: list_methods()["spt"](density=0.2, r=1) for a in ("bert", "llama", "gpt2")},   # 20%, rank 1: some matrices get a LoRA, some keep entries
          **{("autopeft", a): lambda: list_methods()["autopeft"](serial_size=4, parallel_size=4, prefix_length=3, layers_to_transform=[1]) for a in ("bert", "llama", "gpt2")},   # its default chooses nothing
          ("s4", "llama"): lambda: list_methods()["s4"](strategies=["AL", "AP", "AP", "PL"]),   # LLaMA has no bias for BitFit
          # QA-LoRA's INT4 groups must divide a layer's inputs: the tiny models' 37-wide MLPs stay in fp32, the adapted layers (32 wide) take groups of 16
          **{("qa_lora", a): (lambda t: lambda: list_methods()["qa_lora"](quantization={"quant_type": "int4", "block_size": 16, "zero_point": True, "target_modules": t}))(t)
             for a, t in (("bert", ["query", "value"]), ("llama", ["q_proj", "v_proj"]), ("gpt2", ["c_attn"]))},
          # LQ-LoRA under a budget between its two formats: the layers' formats differ, and the round trip must rebuild each in its own
          **{("lq_lora", a): lambda: list_methods()["lq_lora"](bit_budget=3.0, lq_iter=3, menu=[{"quant_type": "nf2", "block_size": 16}, {"quant_type": "nf4", "block_size": 16}])
             for a in ("bert", "llama", "gpt2")},
          **{("lt_sft", a): lambda: list_methods()["lt_sft"](density=0.05, select_steps=5, select_lr=1e-2) for a in ("bert", "llama", "gpt2")}}   # 0.5% of a tiny model is a handful of entries
def _changes_inputs(method:str)->bool:
    "Does the method (a hybrid: one of its parts) change the model's inputs? Its declared `kind` says: not the base at init, not mergeable, no mixed batch (rows of different lengths)."
    return "inputs" in method_kinds(CONFIG.get((method, "bert"), list_methods()[method])(), tiny_bert())

INPUTS_KIND = {m for m in METHODS if _changes_inputs(m)}
NOT_BASE_AT_INIT = {"loftq": "Q + s·BA, nearer the full-precision weights than the quantized base it is compared with",
                    "lq_lora": "Q + L1L2, as LoftQ's"}
# merging into fp16 zero points (QA-LoRA's format, as GPTQ stores them) rounds them: merged outputs to 1e-3, the base after unmerging to 1e-4
TOLERANCES = {"qa_lora": dict(atol=1e-3, base_atol=1e-4)}

REFUSED = {("llama_adapter", "bert"): "LLaMA-style attention", ("llama_adapter", "gpt2"): "LLaMA-style attention",
           **{("xattn_tuning", a): "needs an encoder–decoder" for a in ("bert", "llama", "gpt2")},   # its matrix runs on T5 and BART: tests/test_selective.py
           **{(m, a): "needs a vision transformer" for m in VISION for a in ("bert", "llama", "gpt2")},
           **{(m, a): "two-tower" for m in VL for a in ("bert", "llama", "gpt2")},
           **{(m, a): "text-to-image model|diffusers UNet" for m in DIFFUSION for a in ("bert", "llama", "gpt2")}}

def test_every_registered_method_is_in_the_matrix():
    "Every method the package registers (tests may register methods of their own in the same process: not counted)."
    assert {n for n, c in list_methods().items() if c.__module__.startswith("peft_notes.")} == set(METHODS)

@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
@pytest.mark.parametrize("method", METHODS)
def test_check_method(method, arch):
    make = {"bert": tiny_bert, "llama": tiny_qwen2 if method == "bitfit" else tiny_llama, "gpt2": tiny_gpt2}[arch]
    cfg = CONFIG.get((method, arch), list_methods()[method])
    if (method, arch) in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[method, arch]): get_peft_model(make(), cfg())
        return
    r = check_method(cfg, make, _with_specials if method == "pasta" else default_inputs, lr=LR_ARCH.get((method, arch), LR.get(method, 1e-2)), identity_at_init=method not in INPUTS_KIND | set(NOT_BASE_AT_INIT), **TOLERANCES.get(method, {}))
    assert r["loss_after"] < r["loss_before"]
    if method in INPUTS_KIND:
        assert r["merge"].startswith("refused") and r["mixed_batch_max_diff"].startswith("refused") and r["init_max_diff"] > 0
    else: assert isinstance(r["mixed_batch_max_diff"], float) and r["mixed_batch_max_diff"] <= TOLERANCES.get(method, {}).get("base_atol", 1e-5)
    if method in NOT_BASE_AT_INIT: assert r["init_max_diff"] > 0

def test_llama_adapter_on_mistral():
    "LLaMA-Adapter's second architecture: grouped-query Mistral (the matrix above runs it on LLaMA)."
    make = lambda: T.MistralForCausalLM(T.MistralConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                        intermediate_size=37, max_position_embeddings=64)).eval()
    r = check_method(list_methods()["llama_adapter"], make)
    assert r["init_max_diff"] == 0.0 and r["mixed_batch_max_diff"] <= 1e-5 and r["loss_after"] < r["loss_before"]

@pytest.mark.parametrize("method", [m for m in METHODS if m not in VISION | VL | DIFFUSION])   # the vision methods' bf16 check: tests/test_vision.py::test_bf16_base; the diffusion methods': tests/test_diffusion.py
def test_half_precision_base(method):
    "Every method trains in fp32 over a bf16 base (as PEFT's autocast_adapter_dtype): its trainable tensors and their gradients are fp32, the base stays bf16, and the output comes back in bf16."
    import torch
    base = (tiny_qwen2 if method == "bitfit" else tiny_t5 if method == "xattn_tuning" else tiny_llama)().to(torch.bfloat16)
    cfg = CONFIG.get((method, "llama"), list_methods()[method])()
    pm = get_peft_model(base, cfg)
    x = _with_specials(pm) if method == "pasta" else default_inputs(pm)
    if method == "xattn_tuning": x["decoder_input_ids"] = x["input_ids"][:, :5]
    pm.before_training([{**x, "labels": x["input_ids"]}])              # FishMask chooses its entries from data (the bf16 model's Fisher)
    trainable = {n: p for n, p in pm.named_parameters() if p.requires_grad}
    assert trainable and {p.dtype for p in trainable.values()} == {torch.float32}, {n: p.dtype for n, p in trainable.items() if p.dtype != torch.float32}
    others = {id(p) for n in pm.peft_config if n != "default" for p in pm.adapter_state_dict(n).values()}   # other adapters (a fusion's frozen members): fp32 too
    assert {p.dtype for p in pm.parameters() if not p.requires_grad and id(p) not in others} == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in pm.parameters() if id(p) in others)
    y = pm(**x).logits
    assert y.dtype == torch.bfloat16 and y.isfinite().all()
    y.float().square().mean().backward()
    if method == "adamix":   # a training pass goes through one random pair of modules per position: the others get no gradient this step
        idle = [n for n, p in trainable.items() if p.grad is None]
        assert idle and all(".downs." in n or ".ups." in n for n in idle) and len(idle) < len(trainable), idle
        trainable = {n: p for n, p in trainable.items() if p.grad is not None}
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and p.grad.isfinite().all() for p in trainable.values())
