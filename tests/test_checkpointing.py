"""Activation checkpointing, for every registered method (the README's claim): with `gradient_checkpointing_enable()` a
training step gives the same loss and the same gradients as without it, or, for the methods that hand the model their
prefix as a KV cache, it is refused with the reason named. The refused set is exactly the one the README names."""
import pytest, torch
from peft_notes.core import get_peft_model, list_methods
from peft_notes.models import tiny_llama
from peft_notes.testing import default_inputs
from test_matrix import CONFIG, DIFFUSION, METHODS, VISION, VL, _with_specials, tiny_qwen2, tiny_t5
from test_diffusion import diffusion_batch, tiny_digit_diffusion
from test_diffusion_control import CONDITION
from test_vision import tiny_clip, vit as tiny_vit64

# a prefix passed as a KV cache: checkpointing re-runs each layer's forward, which would append the prefix to the cache twice
REFUSED = {"prefix_tuning", "p_tuning_v2", "apt", "unipelt", "mam", "autopeft", "s4", "noah"}

def _model(method): return (tiny_qwen2 if method == "bitfit" else tiny_t5 if method == "xattn_tuning" else tiny_vit64 if method in VISION else tiny_clip if method in VL
                             else tiny_digit_diffusion if method in DIFFUSION else tiny_llama)()

def _step(method, checkpointing):
    torch.manual_seed(0)
    cfg = {"tip_adapter": lambda: list_methods()["tip_adapter"](train_keys=True)}.get(method) or CONFIG.get((method, "llama"), list_methods()[method])
    pm = get_peft_model(_model(method), cfg())
    if method in DIFFUSION:                  # a text-to-image model: clean pixels, noise, timesteps, captions -> DDPM's loss
        batch = {**diffusion_batch(pm.base_model), **CONDITION.get(method, lambda m: {})(pm)}   # a control method's condition beside it
    elif method in VISION | VL:              # images: a ViT, or the two towers (their image tower)
        batch = {"pixel_values": torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)), "labels": torch.tensor([0, 1, 2])}
    else:
        x = _with_specials(pm) if method == "pasta" else default_inputs(pm)
        if method == "xattn_tuning": x["decoder_input_ids"] = x["input_ids"][:, :5].contiguous()
        batch = {**x, "labels": x["input_ids"] if method != "xattn_tuning" else x["decoder_input_ids"]}
    pm.before_training([batch])
    torch.manual_seed(1)
    for p in pm.parameters():              # move every trained tensor off its init, so that every one gets a gradient
        if p.requires_grad: p.data.add_(torch.randn_like(p) * 0.01)
    if checkpointing:
        pm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        assert any(getattr(m, "gradient_checkpointing", False) for m in pm.modules())   # on: the layers will recompute
    pm.train(); torch.manual_seed(2)
    loss = pm(**batch).loss; loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in pm.named_parameters() if p.requires_grad and p.grad is not None}

def test_refused_set_is_the_registered_prefix_methods():
    assert REFUSED <= set(METHODS)

@pytest.mark.parametrize("method", METHODS)
def test_checkpointing_gives_the_same_gradients_or_is_refused(method):
    if method in REFUSED:
        with pytest.raises(ValueError, match="KV cache, which activation checkpointing would append to twice"): _step(method, True)
        return
    loss0, g0 = _step(method, False)
    loss1, g1 = _step(method, True)
    assert g0 and set(g1) == set(g0)
    assert abs(loss1 - loss0) <= 1e-6
    assert max((g1[k] - g0[k]).abs().max().item() for k in g0) <= 1e-5
