"The diffusion chapters' base: the script that made it retrains at a tiny size, the stored base draws reproducibly, and bad prompts are refused without changing anything."
import json, subprocess, sys
import pytest
import torch

pytest.importorskip("diffusers")

def test_digit_diffusion_retrains_at_a_tiny_size(tmp_path, root):
    "bench/digit_diffusion.py (the judge and the generator) for one epoch each at a tiny width: both load, the record says what made them, and it re-draws its own sample."
    r = subprocess.run([sys.executable, str(root / "bench" / "digit_diffusion.py"), "--epochs", "1", "--scorer-epochs", "0.2", "--channels", "16", "32",
                        "--guidance", "1", "2", "--per-digit", "4", "--chapter-per-digit", "2", "--out", str(tmp_path / "unet"),
                        "--scorer-out", str(tmp_path / "judge")], capture_output=True, text=True, cwd=root, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    from peft_notes.diffusion import caption, load_digit_diffusion, sample_digits, score_samples
    from peft_notes.vision import load_digit_vit
    model, info = load_digit_diffusion(tmp_path / "unet")
    judge, jinfo = load_digit_vit(tmp_path / "judge")
    assert info["provenance"]["command"][:3] == ["digit_diffusion.py", "--epochs", "1"] and info["steps"] == 32      # 2,000 digits 0-4 at batch 64
    assert tuple(model.unet.config.block_out_channels) == (16, 32) and judge.config.image_size == 16 and judge.config.num_labels == 10
    assert [row["guidance"] for row in info["guidance"]] == [1.0, 2.0] and all(0 <= row["accuracy"] <= 1 for row in info["guidance"])
    c = info["chapter_sample"]
    asked = torch.arange(5).repeat_interleave(2)
    imgs = sample_digits(model, [caption(int(d)) for d in asked], seed=c["seed"], guidance=c["guidance"])
    assert score_samples(judge, imgs, asked)["accuracy"] == c["accuracy"]

DIFFUSION = ["textual_inversion", "dreambooth", "custom_diffusion", "svdiff"]
FEW_SHOT_CONFIGS = {"textual_inversion": {}, "dreambooth": {}, "dreambooth-lora": {"r": 4, "alpha": 4}, "custom_diffusion": {}, "svdiff": {}, "lora": {"r": 4, "alpha": 4}}

def tiny_digit_diffusion(seed:int=0):
    "A tiny DigitDiffusion (UNet widths 16, 32) on the shipped MiniLM, its tokenizer taught '<new>' (the placeholder the few-shot methods' defaults name)."
    from peft_notes.diffusion import digit_diffusion
    from peft_notes.methods.diffusion.few_shot import add_placeholder
    m = digit_diffusion(seed=seed, channels=(16, 32))
    add_placeholder(m, "<new>", "digit")
    return m.eval()

def diffusion_inputs(model):
    "Noisy pixels at two timesteps and two captions, one with the placeholder."
    g = torch.Generator().manual_seed(1)
    return {"sample": torch.randn(2, 1, 16, 16, generator=g), "timestep": torch.tensor([50, 700]), **model.tokenize(["a handwritten digit <new>", "a handwritten digit five"])}

def diffusion_batch(model):
    "A training batch: clean pixels, noise, timesteps, captions: the model returns DDPM's loss."
    g = torch.Generator().manual_seed(1)
    return {"pixel_values": torch.rand(2, 1, 16, 16, generator=g) * 2 - 1, "noise": torch.randn(2, 1, 16, 16, generator=g), "timestep": torch.tensor([50, 700]),
            **model.tokenize(["a handwritten digit <new>", "a handwritten digit five"])}

def _config(key):
    from peft_notes.core import list_methods
    return lambda: list_methods()[key.split("-")[0] if key != "dreambooth-lora" else "dreambooth"](**FEW_SHOT_CONFIGS[key])

@pytest.mark.parametrize("key", list(FEW_SHOT_CONFIGS))
def test_few_shot_methods_pass_the_matrix(key):
    "Base output at init, only the method's tensors train, save/load, merge/unmerge, a second adapter, mixed batches: on a tiny text-to-image model."
    from peft_notes.testing import check_method
    r = check_method(_config(key), tiny_digit_diffusion, diffusion_inputs)
    assert r["init_max_diff"] == 0.0 and r["loss_after"] < r["loss_before"]
    assert isinstance(r["mixed_batch_max_diff"], float) and r["mixed_batch_max_diff"] <= 1e-5 and r["merge_max_diff"] <= 1e-5
    if key == "textual_inversion": assert r["trainable"] == 384
    if key == "dreambooth": assert r["trainable"] == sum(p.numel() for p in tiny_digit_diffusion().unet.parameters())

def test_custom_diffusion_trains_exactly_the_cross_attention_kv_and_the_word():
    from peft_notes.core import get_peft_model
    from peft_notes.methods.diffusion.few_shot import CustomDiffusionConfig
    pm = get_peft_model(tiny_digit_diffusion(), CustomDiffusionConfig(modifier_token="<v>"))
    names = [n for n, p in pm.named_parameters() if p.requires_grad]
    kv = [n for n, _ in tiny_digit_diffusion().unet.named_parameters() if ".attn2.to_k." in n or ".attn2.to_v." in n]
    assert len(names) == len(kv) + 1 and all(".attn2.to_k." in n or ".attn2.to_v." in n or "word_embeddings" in n for n in names)
    assert pm.trainable_report().trainable == sum(p.numel() for n, p in tiny_digit_diffusion().unet.named_parameters() if n in kv) + 384

def test_svdiff_counts_one_shift_per_singular_value_and_starts_exact():
    from peft_notes.core import get_peft_model
    from peft_notes.methods.diffusion.few_shot import SVDiffConfig, svdiff_params
    m = tiny_digit_diffusion()
    n = svdiff_params(m)
    pm = get_peft_model(m, SVDiffConfig())
    assert pm.trainable_report().trainable == n
    layer = next(l for l in pm.modules() if type(l).__name__ == "SpectralShiftLayer" and isinstance(l.base_layer, torch.nn.Conv2d))
    assert torch.equal(layer.get_delta_weight("default"), torch.zeros_like(layer.base_layer.weight))      # ReLU(σ + 0) − σ = 0 exactly
    with torch.no_grad(): layer.spectral_shift["default"].fill_(-1e9)                                    # every singular value shifted below zero
    torch.testing.assert_close(layer.get_delta_weight("default"), -layer.base_layer.weight, atol=1e-5, rtol=0)   # ... removes the whole weight

def test_diffusion_methods_refuse_text_models_by_name():
    from peft_notes.core import get_peft_model, list_methods
    from peft_notes.models import tiny_bert
    for m in DIFFUSION + ["dreambooth-lora"]:
        base = tiny_bert(); before = {k: v.clone() for k, v in base.state_dict().items()}
        with pytest.raises(ValueError, match="text-to-image model|diffusers UNet"): get_peft_model(base, _config(m)())
        assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())

def test_textual_inversion_refuses_a_file_made_under_another_tokenizer(tmp_path):
    "A placeholder numbered differently by this tokenizer (it learned another token first): the load is refused by name, the model as it was."
    from peft_notes.core import PeftModel, get_peft_model
    from peft_notes.methods.diffusion.few_shot import TextualInversionConfig, add_placeholder
    pm = get_peft_model(tiny_digit_diffusion(), TextualInversionConfig(placeholder_token="<five>"))
    with torch.no_grad(): next(p for p in pm.parameters() if p.requires_grad).add_(1.0)
    pm.save_adapter(tmp_path)
    other = tiny_digit_diffusion(); add_placeholder(other, "<six>", "digit")          # '<five>' will get the next row
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="other rows of the embedding table"): PeftModel.from_pretrained(other, tmp_path)
    assert other.state_dict().keys() == before.keys() and all(torch.equal(v, before[k]) for k, v in other.state_dict().items()) and "<five>" not in other.placeholders()
    again = PeftModel.from_pretrained(tiny_digit_diffusion(), tmp_path)                # a tokenizer that numbers it as the file does: loads
    x = {**diffusion_inputs(pm), **pm.base_model.tokenize(["a handwritten digit <five>", "a handwritten digit five"])}
    with torch.no_grad(): assert torch.equal(again(**x).sample, pm(**x).sample)

def test_few_shot_loader_weights_the_prior_and_checks_its_captions():
    from peft_notes.methods.diffusion.few_shot import few_shot_loader
    m = tiny_digit_diffusion()
    imgs, cls = torch.rand(3, 1, 16, 16) * 2 - 1, torch.rand(5, 1, 16, 16) * 2 - 1
    b = next(iter(few_shot_loader(m, imgs, "a handwritten digit <new>", cls, ["a handwritten digit zero"] * 5, prior_loss_weight=0.5, batch_size=4, steps=2)))
    assert b["pixel_values"].shape == (8, 1, 16, 16) and b["loss_weight"].tolist() == [1.0] * 4 + [0.5] * 4
    out = m(**b)
    per = ((out.sample - b["noise"]) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(out.loss, (per[:4].sum() + 0.5 * per[4:].sum()) / 8)
    with pytest.raises(ValueError, match="one caption per class image"): few_shot_loader(m, imgs, "x", cls, ["a"] * 2)

@pytest.mark.parametrize("key", ["textual_inversion", "dreambooth", "custom_diffusion", "svdiff", "dreambooth-lora"])
def test_few_shot_methods_over_a_bf16_base(key):
    "fp32 adapters over a bf16 UNet (and text tower): trained tensors and their gradients fp32, the output bf16."
    from peft_notes.core import get_peft_model
    pm = get_peft_model(tiny_digit_diffusion().to(torch.bfloat16), _config(key)())
    x = diffusion_batch(pm.base_model); x["pixel_values"], x["noise"] = x["pixel_values"].bfloat16(), x["noise"].bfloat16()
    out = pm(**x)
    assert out.sample.dtype == torch.bfloat16 and out.loss.isfinite()
    out.loss.backward()
    trained = [p for p in pm.parameters() if p.requires_grad]
    assert trained and all(p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32 for p in trained)

def test_stored_base_draws_reproducibly_and_refuses_bad_prompts(root):
    from peft_notes.diffusion import caption, load_digit_diffusion, sample_digits
    model, info = load_digit_diffusion(root / "nbs" / "assets" / "digit_unet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = sample_digits(model, [caption(1), caption(2)], seed=3, steps=10)
    assert torch.equal(a, sample_digits(model, [caption(1), caption(2)], seed=3, steps=10))
    assert not torch.equal(a, sample_digits(model, [caption(1), caption(2)], seed=4, steps=10))
    with pytest.raises(ValueError, match="is 2[0-9] tokens long; the text tower takes 16"):
        sample_digits(model, [caption(1), "a handwritten digit " + " and ".join(["three"] * 8)], seed=3)
    with pytest.raises(ValueError, match="unknown placeholder token '<digit-5>'"):
        sample_digits(model, ["a handwritten digit <digit-5>"], seed=3)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()) and not model.training


def test_unet_lora_in_diffusers_layout_both_ways(tmp_path):
    "diffusers itself is the oracle: a UNet that loads our file (load_lora_adapter) gives our outputs; a LoRA diffusers made (add_adapter, save_lora_adapter) gives its outputs here."
    pytest.importorskip("peft")
    from peft import LoraConfig as PeftLora
    from peft_notes.core import get_peft_model
    from peft_notes.reparam import LoraConfig
    from peft_notes.methods.diffusion.few_shot import from_diffusers_lora, to_diffusers_lora
    ours = get_peft_model(tiny_digit_diffusion(), LoraConfig(r=4, alpha=8, init_lora_weights=False))
    x = diffusion_inputs(ours.base_model)
    with torch.no_grad():
        states = ours.base_model.encode(x["input_ids"], x["attention_mask"])
        y = ours(**x).sample
    to_diffusers_lora(ours, tmp_path / "ours")
    unet = tiny_digit_diffusion().unet
    unet.load_lora_adapter(str(tmp_path / "ours"), prefix=None, adapter_name="ours", weight_name="pytorch_lora_weights.safetensors")
    with torch.no_grad(): theirs = unet(x["sample"], x["timestep"], encoder_hidden_states=states, encoder_attention_mask=x["attention_mask"]).sample
    torch.testing.assert_close(theirs, y, atol=1e-5, rtol=0)
    unet = tiny_digit_diffusion().unet
    torch.manual_seed(3); unet.add_adapter(PeftLora(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False))
    unet.save_lora_adapter(str(tmp_path / "theirs"))
    with torch.no_grad(): y = unet(x["sample"], x["timestep"], encoder_hidden_states=states, encoder_attention_mask=x["attention_mask"]).sample
    back = from_diffusers_lora(tiny_digit_diffusion(), tmp_path / "theirs")
    with torch.no_grad(): torch.testing.assert_close(back(**x).sample, y, atol=1e-5, rtol=0)
    assert back.peft_config["default"].r == 4 and back.peft_config["default"].alpha == 8

def test_few_shot_bench_tiny(tmp_path, root):
    "bench/diffusion_few_shot.py at a tiny size: the base's row and one method's, rows and seed 0's samples stored, a second call resumes."
    out = tmp_path / "fs.json"
    cmd = [sys.executable, str(root / "bench" / "diffusion_few_shot.py"), "--methods", "base", "svdiff", "--seeds", "0", "--steps", "3", "--samples", "25",
           "--workers", "1", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert sorted(x["method"] for x in rows) == ["base", "svdiff"]
    sv = next(x for x in rows if x["method"] == "svdiff")
    assert sv["steps"] == 3 and sv["prior"] is True
    from peft_notes.core import get_peft_model, list_methods
    from peft_notes.diffusion import load_digit_diffusion
    assert sv["trainable"] == get_peft_model(load_digit_diffusion(root / "nbs" / "assets" / "digit_unet")[0], list_methods()["svdiff"]()).trainable_report().trainable
    assert 0 <= sv["five_accuracy"] <= 1 and sv["adapter_bytes"] > 0 and next(x for x in rows if x["method"] == "base")["trainable"] == 0
    from safetensors.torch import load_file
    assert load_file(str(tmp_path / "fs_samples.safetensors"))["svdiff/fives"].shape == (20, 1, 16, 16)
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=600)    # everything done: nothing runs again
    assert r.returncode == 0 and len(json.loads(out.read_text())["rows"]) == 2 and "seed" not in r.stdout

def test_full_dreambooth_is_refused_by_peft_export_and_its_lora_form_exports(tmp_path):
    from peft_notes.core import get_peft_model
    from peft_notes.interop import to_hf_peft
    from peft_notes.methods.diffusion.few_shot import DreamBoothConfig
    with pytest.raises(ValueError, match="r = 0.*no Hugging Face PEFT counterpart"):
        to_hf_peft(get_peft_model(tiny_digit_diffusion(), DreamBoothConfig()), tmp_path / "full")
    assert not (tmp_path / "full").exists()
    to_hf_peft(get_peft_model(tiny_digit_diffusion(), DreamBoothConfig(r=4)), tmp_path / "lora")
    assert json.loads((tmp_path / "lora" / "adapter_config.json").read_text())["peft_type"] == "LORA"
