"""The controllable-generation methods (chapter 79c): ControlNet, T2I-Adapter and IP-Adapter through the shared matrix
on a tiny text-to-image model, their conditions' bad input, a bf16 base, several ControlNets at once, the ControlNet
as diffusers' own model, and the stored comparison's bench at a tiny size."""
import json, subprocess, sys
import pytest, torch
from test_diffusion import diffusion_batch, diffusion_inputs, tiny_digit_diffusion

def _edges(m, n=2):
    return {"control_image": (torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(3)) > 0.7).float()}

def _embeds(m, n=2):
    return {"image_embeds": torch.randn(n, 64, generator=torch.Generator().manual_seed(3))}

CONDITION = {"controlnet": _edges, "t2i_adapter": _edges, "ip_adapter": _embeds}   # method -> model -> what its calls read beside the batch

def _config(method, **kw):
    from peft_notes.core import list_methods
    return lambda: list_methods()[method](**kw)

@pytest.mark.parametrize("method", list(CONDITION))
def test_control_methods_pass_the_matrix(method):
    "Base output at init (zero start), only the method's tensors train, save/load, not mergeable (refused), a second adapter; mixed batches refused by name."
    from peft_notes.testing import check_method
    r = check_method(_config(method), tiny_digit_diffusion, diffusion_inputs, adapter_inputs=CONDITION[method])
    assert r["init_max_diff"] == 0.0 and r["merge"] == "refused (not mergeable)" and r["mixed_batch_max_diff"].startswith("refused (a")
    assert r["loss_after"] < r["loss_before"]

@pytest.mark.parametrize("method", list(CONDITION))
def test_the_papers_own_start_changes_the_output_at_step_0(method):
    "zero_init=False (ControlNet's ablation; T2I-Adapter's and IP-Adapter's papers' init): the output moves before any training, and the rest of the matrix holds."
    from peft_notes.testing import check_method
    r = check_method(_config(method, zero_init=False), tiny_digit_diffusion, diffusion_inputs, adapter_inputs=CONDITION[method], identity_at_init=False)
    assert r["init_max_diff"] > 1e-4

def _call(pm, method, n=2, **over):
    x = {**diffusion_inputs(pm.base_model), **CONDITION[method](pm, n), **over}
    with torch.no_grad(): return pm(**x).sample

@pytest.mark.parametrize("method", ["controlnet", "t2i_adapter"])
def test_a_condition_image_of_the_wrong_size_or_kind_is_refused_and_nothing_changes(method):
    from peft_notes.core import get_peft_model
    pm = get_peft_model(tiny_digit_diffusion(), _config(method)()).eval()
    before = {k: v.clone() for k, v in pm.state_dict().items()}
    y = _call(pm, method)
    with pytest.raises(ValueError, match=r"control_image is \(2, 1, 8, 8\); for this batch it must be \(2, 1, 16, 16\)"):
        _call(pm, method, control_image=torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"control_image is \(3, 1, 16, 16\)"): _call(pm, method, control_image=torch.zeros(3, 1, 16, 16))
    with pytest.raises(ValueError, match=r"control_image must be a float tensor \(batch, 1, H, W\); got a tensor of shape \(2, 3, 16, 16\)"):
        _call(pm, method, control_image=torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="reads `control_image` with every call: pass it"):
        with torch.no_grad(): pm(**diffusion_inputs(pm.base_model))
    assert all(torch.equal(v, before[k]) for k, v in pm.state_dict().items())
    assert torch.equal(_call(pm, method), y)                               # and the next good call is as before

def test_ip_adapter_refuses_an_embedding_of_the_wrong_width_or_rows():
    from peft_notes.core import get_peft_model
    pm = get_peft_model(tiny_digit_diffusion(), _config("ip_adapter")()).eval()
    y = _call(pm, "ip_adapter")
    with pytest.raises(ValueError, match=r"image_embeds must be \(batch, 64\); got a tensor of shape \(2, 32\)"): _call(pm, "ip_adapter", image_embeds=torch.zeros(2, 32))
    with pytest.raises(ValueError, match="image_embeds has 3 rows for a batch of 2"): _call(pm, "ip_adapter", image_embeds=torch.zeros(3, 64))
    with pytest.raises(ValueError, match="reads `image_embeds` with every call: pass it"):
        with torch.no_grad(): pm(**diffusion_inputs(pm.base_model))
    assert torch.equal(_call(pm, "ip_adapter"), y)

@pytest.mark.parametrize("method", list(CONDITION))
def test_control_methods_over_a_bf16_base(method):
    "fp32 adapters over a bf16 UNet: trained tensors and their gradients fp32, the output bf16."
    from peft_notes.core import get_peft_model
    pm = get_peft_model(tiny_digit_diffusion().to(torch.bfloat16), _config(method)())
    x = diffusion_batch(pm.base_model); x["pixel_values"], x["noise"] = x["pixel_values"].bfloat16(), x["noise"].bfloat16()
    with torch.no_grad():                                                   # off the zero start, so that every tensor gets a gradient
        for p in pm.parameters():
            if p.requires_grad: p.add_(torch.randn_like(p) * 0.01)
    out = pm(**x, **CONDITION[method](pm))
    assert out.sample.dtype == torch.bfloat16 and out.loss.isfinite()
    out.loss.backward()
    trained = [p for p in pm.parameters() if p.requires_grad]
    assert trained and all(p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32 for p in trained)

def _nudge(pm, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad: p.add_(torch.randn(p.shape, generator=g) * 0.05)

def test_controlnet_is_diffusers_own_and_several_add_their_residuals(tmp_path):
    "The branch is a diffusers ControlNetModel: saved with save_pretrained and run by diffusers itself beside the plain UNet, it gives our output; two ControlNets active at once add their residuals (diffusers' MultiControlNet)."
    from diffusers import ControlNetModel
    from peft_notes.core import get_peft_model
    from peft_notes.methods.diffusion.control import ControlNetConfig, UNetControlLayer
    pm = get_peft_model(tiny_digit_diffusion(), ControlNetConfig()).eval(); _nudge(pm)
    pm.add_adapter("b", ControlNetConfig()); pm.set_adapter("b"); _nudge(pm, 1)
    layer = pm.base_model.unet
    assert isinstance(layer, UNetControlLayer)
    layer.control["default"].net.save_pretrained(tmp_path / "a"); layer.control["b"].net.save_pretrained(tmp_path / "b")
    x, c = diffusion_inputs(pm.base_model), _edges(pm)["control_image"]
    dm, unet = pm.base_model, layer.base_layer
    with torch.no_grad():
        states = dm.encode(x["input_ids"], x["attention_mask"])
        res = [ControlNetModel.from_pretrained(tmp_path / k)(x["sample"], x["timestep"], states, controlnet_cond=c, return_dict=False) for k in ("a", "b")]
        ref = lambda rs: unet(x["sample"], x["timestep"], encoder_hidden_states=states, encoder_attention_mask=x["attention_mask"],
                              down_block_additional_residuals=tuple(sum(ds) for ds in zip(*[r[0] for r in rs])), mid_block_additional_residual=sum(r[1] for r in rs)).sample
        for name, rs in (("default", res[:1]), ("b", res[1:])):
            pm.set_adapter(name); torch.testing.assert_close(pm(**x, control_image=c).sample, ref(rs), atol=1e-6, rtol=0)
        pm.set_adapter(["default", "b"]); torch.testing.assert_close(pm(**x, control_image=c).sample, ref(res), atol=1e-6, rtol=0)
        pm.set_adapter(["default", "b"], composition="parallel")
        with pytest.raises(ValueError, match="combine by adding their residuals"): pm(**x, control_image=c)

def test_control_sampling_is_seeded_and_a_wrong_condition_is_refused():
    from peft_notes.core import get_peft_model
    from peft_notes.diffusion import sample_digits
    pm = get_peft_model(tiny_digit_diffusion(), _config("t2i_adapter")()).eval(); _nudge(pm)
    c = _edges(pm, 3)["control_image"]
    a = sample_digits(pm, ["a handwritten digit one"] * 3, seed=4, steps=3, control_image=c)
    assert torch.equal(a, sample_digits(pm, ["a handwritten digit one"] * 3, seed=4, steps=3, control_image=c))
    assert not torch.equal(a, sample_digits(pm, ["a handwritten digit one"] * 3, seed=4, steps=3, control_image=1 - c))
    with pytest.raises(ValueError, match="control_image is"): sample_digits(pm, ["a handwritten digit one"] * 3, seed=4, steps=3, control_image=c[:, :, :8, :8])

def test_edge_agreement_is_one_on_itself_and_falls_with_a_shift():
    from peft_notes.methods.diffusion.control import edge_agreement, edge_map
    x = torch.zeros(1, 1, 16, 16); x[..., 4:12, 6:9] = 1.0                  # a bar
    e = edge_map(x)
    assert e.sum() > 0 and edge_agreement(x, e).item() == 1.0
    assert edge_agreement(torch.roll(x, 3, 3), e).item() < 0.5 and edge_agreement(torch.zeros_like(x), e).item() == 0.0
    assert edge_agreement(torch.roll(x, 1, 3), e, tolerance=1).item() == 1.0

def test_the_control_bench_runs_at_a_tiny_size(root, tmp_path):
    "bench/diffusion_control.py end to end: the base row and one method's, a few steps, rows and samples written."
    out = tmp_path / "c.json"
    cmd = [sys.executable, str(root / "bench" / "diffusion_control.py"), "--methods", "base", "t2i_adapter", "--seeds", "0", "--steps", "2",
           "--per-digit", "2", "--workers", "1", "--out", str(out)]
    r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert sorted(x["run"] for x in rows) == ["base", "t2i_adapter"]
    t = next(x for x in rows if x["run"] == "t2i_adapter")
    assert t["steps"] == 2 and t["trainable"] > 0 and t["at_init"]["caption"] == {**next(x for x in rows if x["run"] == "base")["trained"]["caption"], "sample_seconds": t["at_init"]["caption"]["sample_seconds"]}
    from safetensors.torch import load_file
    assert load_file(str(tmp_path / "c_samples.safetensors"))["t2i_adapter/trained/caption"].shape == (10, 1, 16, 16)
