"""The vision chapters' methods and bases: the shared matrix on two ViTs, bf16 bases, the stored ViT's record, bad input."""
import json
import pytest, torch
import transformers as T
from peft_notes.core import get_peft_model, list_methods
from peft_notes.models import tiny_bert, tiny_llama, tiny_vit
from peft_notes.testing import check_method

VISION = ["vpt", "vpt_deep", "adaptformer", "convpass", "fact"]
CHANGES_OUTPUT_AT_INIT = {"vpt", "vpt_deep"}   # the [CLS] token attends to the prompts from the first step
LR = {"vpt": 5e-2, "vpt_deep": 5e-2}

def test_vision_methods_are_all_here():
    "Every registered vision method runs this file's matrix."
    from peft_notes.core import list_methods
    assert {n for n, c in list_methods().items() if c.__module__.startswith("peft_notes.methods.vision.")} == set(VISION)

def second_vit():
    "Another ViT geometry: 8×8 patches of 24×24 one-channel images, 3 layers of width 24."
    torch.manual_seed(0)
    return T.ViTForImageClassification(T.ViTConfig(hidden_size=24, num_hidden_layers=3, num_attention_heads=2, intermediate_size=48,
                                                   image_size=24, patch_size=8, num_channels=1, num_labels=4)).eval()

def _pixels(c, s): return lambda m: {"pixel_values": torch.randn(3, c, s, s, generator=torch.Generator().manual_seed(1))}
def vit():
    "The tiny test ViT with an MLP of two 32-wide blocks (FacT cuts weights into d×d blocks; the default 37-wide MLP is refused by name)."
    return tiny_vit(intermediate_size=64)
ARCHS = {"vit": (vit, _pixels(3, 16)), "second_vit": (second_vit, _pixels(1, 24))}

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", VISION)
def test_check_method_on_vits(method, arch):
    make, inputs = ARCHS[arch]
    r = check_method(list_methods()[method], make, inputs, identity_at_init=method not in CHANGES_OUTPUT_AT_INIT, lr=LR.get(method, 1e-2))
    assert r["loss_after"] < r["loss_before"]
    if method in CHANGES_OUTPUT_AT_INIT: assert r["init_max_diff"] > 0
    if not list_methods()[method]().can_merge(make()): assert r["merge"].startswith("refused")

@pytest.mark.parametrize("method", VISION)
@pytest.mark.parametrize("text_model", [tiny_bert, tiny_llama])
def test_vision_method_on_a_text_model(method, text_model):
    "A clear error naming the problem, and the model as it was."
    m = text_model(); before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match="needs a vision transformer"): get_peft_model(m, list_methods()[method]())
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items()) and all(p.requires_grad for p in m.parameters())
    assert type(m.bert if hasattr(m, "bert") else m.model).__name__ in ("BertModel", "LlamaModel")

@pytest.mark.parametrize("method", VISION)
def test_wrong_images_are_refused_and_change_nothing(method):
    pm = get_peft_model(vit(), list_methods()[method]())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad(): y = pm(pixel_values=x).logits
    with pytest.raises(ValueError, match=r"Input image size \(20\*20\) doesn't match model \(16\*16\)"): pm(pixel_values=torch.randn(2, 3, 20, 20))
    with pytest.raises(ValueError, match="channel dimension"): pm(pixel_values=torch.randn(2, 1, 16, 16))
    with torch.no_grad(): assert torch.equal(pm(pixel_values=x).logits, y)

@pytest.mark.parametrize("method", VISION)
def test_bf16_base(method):
    "fp32 trainable tensors over a bf16 ViT; the output comes back in bf16."
    pm = get_peft_model(vit().to(torch.bfloat16), list_methods()[method]())
    trainable = [p for p in pm.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    y = pm(pixel_values=torch.randn(2, 3, 16, 16, dtype=torch.bfloat16)).logits
    assert y.dtype == torch.bfloat16 and y.isfinite().all()
    y.float().square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable)

def test_stored_vit_scores_its_record(root):
    "The stored base loads and scores, on the held-out digits 0-4, exactly what its record says; its provenance names the script and a commit."
    from peft_notes.train import evaluate
    from peft_notes.vision import image_loader, load_digit_vit, mnist_images, split_classes
    vit, info = load_digit_vit(root / "nbs" / "assets" / "digit_vit")
    task = split_classes(*mnist_images(), info["digits"])
    assert evaluate(vit, image_loader(*task["test"], batch_size=250)) == info["test_accuracy"] > 0.95
    assert info["provenance"]["command"][0] == "digit_vit.py" and len(info["provenance"]["commit"]) == 40
    fresh, _ = load_digit_vit(root / "nbs" / "assets" / "digit_vit", num_labels=7)
    assert fresh.classifier.out_features == 7 and fresh.config.num_labels == 7
    assert torch.equal(fresh.vit.embeddings.cls_token, vit.vit.embeddings.cls_token)

def test_missing_stored_vit_is_a_clear_error(tmp_path):
    from peft_notes.vision import load_digit_vit
    with pytest.raises(FileNotFoundError, match="no stored ViT"): load_digit_vit(tmp_path)

@pytest.mark.parametrize("arch", ARCHS)
def test_fact_tucker_on_vits(arch):
    make, inputs = ARCHS[arch]
    r = check_method(lambda: list_methods()["fact"](fact_format="tk"), make, inputs)   # FacT's second format
    assert r["init_max_diff"] == 0 and r["merge_max_diff"] <= 1e-5 and r["loss_after"] < r["loss_before"]

def _stored_vit(root, k=5): 
    from peft_notes.vision import load_digit_vit
    return load_digit_vit(root / "nbs" / "assets" / "digit_vit", num_labels=k, seed=0)[0]

def _few_steps(model, x, y, steps=5, lr=1e-2):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits, y); opt.zero_grad(); loss.backward(); opt.step()
    return model.eval()

@pytest.mark.parametrize("direction", ["ours_loads_in_peft", "peft_loads_here"])
def test_lora_on_the_stored_vit_with_peft(direction, tmp_path, root):
    "LoRA on the stored ViT's query and value projections, with a new head, as PEFT's image-classification guide sets it up: the same logits both ways."
    peft = pytest.importorskip("peft")   # the dev extra: `make test` installs it
    from peft_notes.interop import from_hf_peft, to_hf_peft
    from peft_notes.vision import mnist_images, split_classes
    x, y = (t[:12] for t in split_classes(*mnist_images(), range(5, 10))["train"])
    if direction == "ours_loads_in_peft":
        ours = _few_steps(get_peft_model(_stored_vit(root), list_methods()["lora"](r=8, alpha=16, modules_to_save=["classifier"])), x, y)   # our default targets
        assert {n.rsplit(".", 1)[-1] for n, _ in ours.adapter_context().layers()} >= {"q_proj", "v_proj"}
        to_hf_peft(ours, tmp_path)
        theirs = peft.PeftModel.from_pretrained(_stored_vit(root), tmp_path).eval()
    else:
        theirs = _few_steps(peft.get_peft_model(_stored_vit(root), peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                                                  modules_to_save=["classifier"])), x, y)
        theirs.save_pretrained(tmp_path)
        ours = from_hf_peft(_stored_vit(root), tmp_path)
    with torch.no_grad():
        a, b = ours(pixel_values=x).logits, theirs(pixel_values=x).logits
        assert not torch.allclose(a, _stored_vit(root)(pixel_values=x).logits)   # trained: the adapter and the head do something
    torch.testing.assert_close(b, a, atol=1e-5, rtol=0)

def test_stored_two_towers_score_their_record(root):
    "The stored DigitCLIP loads (its text tower the shipped MiniLM, frozen) and scores, zero-shot, what its record says; a missing folder or no classes is a clear error."
    from peft_notes.multimodal import DIGIT_NAMES, load_digit_clip
    from peft_notes.train import evaluate
    from peft_notes.vision import image_loader, mnist_images, split_classes
    clip, tok, info = load_digit_clip(root / "nbs" / "assets" / "digit_clip")
    with pytest.raises(ValueError, match="call set_classes"): clip(pixel_values=torch.zeros(1, 1, 28, 28))
    task = split_classes(*mnist_images(), range(5))
    clip.set_classes(DIGIT_NAMES[:5], tok)
    assert evaluate(clip, image_loader(*task["test"], batch_size=250)) == info["zero_shot"]["0-4"] > 0.95
    assert not any(p.requires_grad for p in clip.text_model.parameters()) and info["provenance"]["command"][0] == "digit_clip.py"
    with pytest.raises(FileNotFoundError, match="no stored DigitCLIP"): load_digit_clip(root / "nbs")

def test_contrastive_loss_is_clips_with_distinct_classes():
    from peft_notes.multimodal import contrastive_loss
    z = torch.randn(5, 5)
    ce = (torch.nn.functional.cross_entropy(z, torch.arange(5)) + torch.nn.functional.cross_entropy(z.T, torch.arange(5))) / 2
    torch.testing.assert_close(contrastive_loss(z, torch.arange(5)), ce)
    same, together, apart = torch.tensor([0, 0, 1]), torch.tensor([[5., 5, -5], [5, 5, -5], [-5, -5, 5]]), torch.eye(3) * 10 - 5
    assert contrastive_loss(together, same) < contrastive_loss(apart, same)                          # two images of one class are not pushed apart...
    assert contrastive_loss(apart, torch.arange(3)) < contrastive_loss(together, torch.arange(3))    # ...as CLIP's own loss would, with every pair its own class


def tiny_clip():
    "A second two-tower model: a tiny ViT and a tiny BERT, three classes of two captions of random token ids."
    from peft_notes.multimodal import DigitCLIP
    torch.manual_seed(0)
    vit = T.ViTModel(T.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=16, patch_size=4), add_pooling_layer=False)
    bert = T.BertModel(T.BertConfig(vocab_size=99, hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, max_position_embeddings=32), add_pooling_layer=False)
    m = DigitCLIP(vit, bert, dim=16).eval(); m.text_model.requires_grad_(False)
    m.caption_ids = torch.randint(3, 99, (3, 2, 6), generator=torch.Generator().manual_seed(3)); m.caption_ids[..., 0] = 2
    m.caption_mask = torch.ones_like(m.caption_ids)
    return m

VL = {"coop": (lambda: list_methods()["coop"](n_ctx=3), False), "cocoop": (lambda: list_methods()["cocoop"](n_ctx=3, meta_reduction=4), False), "clip_adapter": (lambda: list_methods()["clip_adapter"](), False),
      "tip_adapter": (lambda: list_methods()["tip_adapter"](train_keys=True), True)}

def test_vl_methods_are_all_here():
    assert {n for n, c in list_methods().items() if c.__module__.startswith("peft_notes.methods.multimodal.")} == set(VL)

@pytest.mark.parametrize("method", VL)
@pytest.mark.parametrize("model", ["tiny"])   # the stored DigitCLIP: its chapter (nbs/76_clip_adapters.ipynb) runs the matrix on it
def test_check_method_on_two_towers(method, model, root):
    "CoOp, CoCoOp and CLIP-Adapter change the output from the start; Tip-Adapter is the base until before_training builds its cache (checked as Tip-Adapter-F: its keys train)."
    from peft_notes.multimodal import DIGIT_NAMES, load_digit_clip
    if model == "tiny": make, inputs = tiny_clip, _pixels(3, 16)
    else:
        tok = load_digit_clip(root / "nbs" / "assets" / "digit_clip")[1]
        make = lambda: load_digit_clip(root / "nbs" / "assets" / "digit_clip")[0].set_classes(DIGIT_NAMES[5:], tok, templates=["{}"])
        inputs = _pixels(1, 28)
    cfg, same = VL[method]
    r = check_method(cfg, make, inputs, identity_at_init=same)
    assert r["merge"].startswith("refused") and (r["init_max_diff"] == 0) == same and r["loss_after"] < r["loss_before"]
    prompts = {"coop": "CoOp", "cocoop": "CoCoOp"}
    assert isinstance(r["mixed_batch_max_diff"], float) if method not in prompts else r["mixed_batch_max_diff"].startswith(f"refused ({prompts[method]}")

def test_tip_adapter_training_free_cache_round_trip(tmp_path):
    "Training-free: nothing trains, the cache is built from the batches, saved with its size, and a load gives the same logits."
    from peft_notes.core import PeftModel
    pm = get_peft_model(tiny_clip(), list_methods()["tip_adapter"]())
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad(): y0 = pm(pixel_values=x).logits
    pm.before_training([{"pixel_values": x, "labels": torch.tensor([0, 1, 2, 0, 1, 2])}])
    assert pm.trainable_report().trainable == 0
    with torch.no_grad(): y = pm(pixel_values=x).logits
    with torch.no_grad(): f = pm.base_model.image_features(x)
    votes = torch.exp(-5.5 * (1 - f @ f.T)) @ torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 0, 1, 2]), 3).float()
    torch.testing.assert_close(y, y0 + votes)                                    # CLIP's logits + α·φ(f Kᵀ)·L, α = 1, β = 5.5
    pm.save_adapter(tmp_path)
    again = PeftModel.from_pretrained(tiny_clip(), tmp_path)
    with torch.no_grad(): assert torch.equal(again(pixel_values=x).logits, y)

@pytest.mark.parametrize("method", ["coop", "cocoop", "clip_adapter"])
def test_vl_bf16(method):
    pm = get_peft_model(tiny_clip().to(torch.bfloat16), VL[method][0]())
    trainable = [p for p in pm.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    y = pm(pixel_values=torch.randn(2, 3, 16, 16, dtype=torch.bfloat16)).logits
    assert y.isfinite().all(); y.float().square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable)

def test_coop_context_from_words_and_position_limit(root):
    "ctx_init: the context starts as the words' embeddings (M = their tokens); a context past the text tower's positions is refused, the model unchanged."
    from peft_notes.multimodal import DIGIT_NAMES, load_digit_clip
    clip, tok, _ = load_digit_clip(root / "nbs" / "assets" / "digit_clip")
    clip.set_classes(DIGIT_NAMES[5:], tok, templates=["{}"])
    from peft_notes.models import minilm_path
    with pytest.raises(ValueError, match="needs tokenizer_name_or_path"): list_methods()["coop"](ctx_init="a handwritten digit")
    pm = get_peft_model(clip, list_methods()["coop"](ctx_init="a handwritten digit", tokenizer_name_or_path=str(minilm_path())))
    ctx = pm.adapter_context().layers()[0][1].coop_context["default"]
    ids = tok("a handwritten digit", add_special_tokens=False)["input_ids"]
    words = load_digit_clip(root / "nbs" / "assets" / "digit_clip")[0].text_model.get_input_embeddings().weight[torch.tensor(ids)]
    assert ctx.shape[0] == len(ids) and torch.equal(ctx.detach(), words)
    plain = load_digit_clip(root / "nbs" / "assets" / "digit_clip")[0]
    with pytest.raises(ValueError, match="needs 513 positions; the model has 512"): get_peft_model(plain, list_methods()["coop"](n_ctx=513))
    assert type(plain.text_model).__name__ == "BertModel"                       # not wrapped: the refusal came before any change

def test_cocoop_captions_follow_the_image_and_refuse_the_text_tower_alone():
    "CoCoOp: each image gets its own captions (the Meta-Net's token differs per image); the text tower called without images is refused; disabled, the towers are the base."
    m = tiny_clip()
    base = tiny_clip()
    pm = get_peft_model(m, list_methods()["cocoop"](n_ctx=2, meta_reduction=4)).eval()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        f = pm.base_model.image_features(x)
        caps = pm.base_model.caption_features(f)
    assert caps.shape == (3, 3, 2, 16) and not torch.allclose(caps[0], caps[1])       # (images, classes, templates, dim): per image
    with pytest.raises(ValueError, match="conditions the captions on the image"): pm.base_model.class_features()
    with pm.disable_adapter(), torch.no_grad(): torch.testing.assert_close(pm(pixel_values=x).logits, base(pixel_values=x).logits)
    with pytest.raises(ValueError, match="meta_reduction must be at least 1"): list_methods()["cocoop"](meta_reduction=0)
    m.contrastive = True; pm.train()
    with pytest.raises(ValueError, match="contrastive pretraining"): pm(pixel_values=x, labels=torch.tensor([0, 1, 2]))

def test_noah_on_a_vit_prompts_are_visual(tmp_path, root):
    "NOAH on a ViT: its prompt is VPT's (a length per layer, 0 included), the count is noah_params with d per prompt token, a save round-trips, and a subnet inherited from the supernet computes what the supernet computes with it switched on."
    from peft_notes.core import PeftModel
    from peft_notes.methods.hybrid.noah import NOAHSupernetConfig, inherit_subnet, noah_params, set_subnet
    from peft_notes.methods.vision.vpt import VisualPromptLayer
    from peft_notes.vision import load_digit_vit
    load = lambda: load_digit_vit(root / "nbs" / "assets" / "digit_vit", num_labels=5)[0]
    sub = {"adapter": [4, 0, 8, 8, 0, 4], "lora": [2, 2, 0, 0, 4, 4], "prompt": [0, 3, 0, 5, 5, 2]}
    cfg = lambda: list_methods()["noah"](adapter_sizes=sub["adapter"], lora_ranks=sub["lora"], prompt_lengths=sub["prompt"], modules_to_save=["classifier"])
    torch.manual_seed(0); pm = get_peft_model(load(), cfg())
    assert pm.trainable_report().trainable == noah_params(64, sub["adapter"], sub["lora"], sub["prompt"], kv_width=64) + 325
    prompted = {n: l.vpt_prompts["default"].shape[0] for n, l in pm.adapter_context().layers(VisualPromptLayer)}
    assert prompted == {f"vit.layers.{i}": l for i, l in enumerate(sub["prompt"]) if i >= 1}   # layer 0 has none and nothing to remove; layer 2 removes layer 1's
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(): y = pm(pixel_values=x).logits
    pm.save_adapter(tmp_path)
    with torch.no_grad(): assert torch.equal(PeftModel.from_pretrained(load(), tmp_path)(pixel_values=x).logits, y)
    sup = get_peft_model(load(), NOAHSupernetConfig(adapter_choices=[0, 4, 8], lora_choices=[0, 2, 4], prompt_choices=[0, 3, 5], modules_to_save=["classifier"]))
    with torch.no_grad():
        for p in sup.parameters():
            if p.requires_grad: p.normal_(0, 0.1)
    set_subnet(sup, sub)
    small = inherit_subnet(sup, get_peft_model(load(), cfg()))
    with torch.no_grad(): torch.testing.assert_close(small(pixel_values=x).logits, sup(pixel_values=x).logits, atol=1e-5, rtol=1e-5)

def test_noah_matrix_on_a_second_vit():
    r = check_method(lambda: list_methods()["noah"](adapter_sizes=4, lora_ranks=2, prompt_lengths=[2, 0]), vit, _pixels(3, 16), identity_at_init=False)
    assert r["loss_after"] < r["loss_before"] and r["merge"].startswith("refused")
