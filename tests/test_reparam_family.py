"""The reparameterized family beyond plain LoRA: bad input, the training hooks in `fit`, and the corners the chapters do not show."""
import tempfile
import pytest, torch
from torch import nn
from peft_notes.core import PeftModel, get_peft_model
from peft_notes.models import tiny_bert, tiny_gpt2, tiny_llama
from peft_notes.reparam import LoraConfig
from peft_notes.reparam import DoraConfig, DoraLayer
from peft_notes.reparam import LohaConfig, LohaLayer, LokrConfig, VeraConfig
from peft_notes.reparam import AdaloraConfig, DyloraConfig, SoraConfig, SoraLayer, ranks_left, set_rank

X = torch.randint(0, 99, (4, 9), generator=torch.Generator().manual_seed(0))

def _nudge(pm):
    "Make every adapter tensor non-trivial, so outputs depend on it."
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad: p.add_(torch.randn_like(p) * 0.05)
    return pm.eval()

@pytest.mark.parametrize("bad, match", [
    (lambda: DoraConfig(init_lora_weights="pissa"), "DoRA normalises the base weight"),
    (lambda: LoraConfig(init_lora_weights="svd"), "init_lora_weights must be"),
    (lambda: LoraConfig(init_lora_weights="pissa_niter_0"), "init_lora_weights must be"),
    (lambda: VeraConfig(r=0), "VeraConfig.r must be a positive rank"),
    (lambda: LohaConfig(r=-1), "LohaConfig.r must be a positive rank"),
    (lambda: LokrConfig(r=0), "LokrConfig.r must be a positive rank"),
    (lambda: AdaloraConfig(init_r=4, target_r=8), "0 < target_r <= init_r"),
    (lambda: AdaloraConfig(total_step=10, tinit=6, tfinal=4), "leave no pruning phase"),
    (lambda: AdaloraConfig(beta1=1.0), "beta1/beta2 must be in"),
    (lambda: DyloraConfig(r=4, r_min=5), "1 <= r_min <= r"),
    (lambda: DyloraConfig(r=4, eval_rank=9), "eval_rank must be in"),
    (lambda: SoraConfig(sparse_lambda=-1.0), "sparse_lambda must be >= 0"),
])
def test_bad_configs_name_the_problem(bad, match):
    with pytest.raises((ValueError, TypeError), match=match): bad()

def test_pissa_rank_above_the_matrix_is_refused_and_the_model_is_left_alone():
    base = tiny_bert(); w = base.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    with pytest.raises(ValueError, match="needs r <= min"): get_peft_model(base, LoraConfig(r=64, init_lora_weights="pissa", target_modules=["query"]))
    assert torch.equal(base.bert.encoder.layer[0].attention.self.query.weight, w)
    assert not any("lora" in n for n, _ in base.named_modules())

def test_pissa_load_rederives_the_residual_from_the_saved_pair(tmp_path):
    "If the saved (A0, B0) are not what this machine's SVD gives, the base is shifted by the saved pair."
    from peft_notes.core import read_safetensors
    from safetensors.torch import save_file
    pm = _nudge(get_peft_model(tiny_bert(), LoraConfig(r=4, alpha=8, init_lora_weights="pissa", target_modules=["query"])))
    pm.save_adapter(tmp_path)
    t = read_safetensors(tmp_path / "adapter_model.safetensors")
    k = next(k for k in t if k.endswith("lora_init.A0")); t[k] = t[k] * 1.5   # another "SVD" of the same W
    save_file(t, tmp_path / "adapter_model.safetensors")
    loaded = PeftModel.from_pretrained(tiny_bert(), tmp_path)
    layer = loaded.base_model.get_submodule(k.removeprefix("base_model.model.").rsplit(".lora_init", 1)[0])
    init = layer.lora_init["default"]
    w0 = tiny_bert().get_submodule(k.removeprefix("base_model.model.").rsplit(".lora_init", 1)[0]).weight
    torch.testing.assert_close(layer.base_layer.weight + layer.scaling["default"] * init.B0 @ init.A0, w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(loaded.unload().get_submodule(k.removeprefix("base_model.model.").rsplit(".lora_init", 1)[0]).weight, w0, atol=1e-6, rtol=0)

def test_pissa_with_a_plain_lora_beside_it():
    "A plain adapter active in a layer whose base a PiSSA adapter rewrote still sees the original W."
    base = tiny_bert()
    with torch.no_grad(): y0 = base(X).logits.clone()
    pm = get_peft_model(base, LoraConfig(r=4, init_lora_weights="pissa", target_modules=["query"]))
    pm.add_adapter("plain", LoraConfig(r=4, target_modules=["query"])); pm.set_adapter("plain")
    with torch.no_grad(): torch.testing.assert_close(pm(X).logits, y0, atol=1e-5, rtol=0)
    pm.delete_adapter("default")
    torch.testing.assert_close(pm.base_model.bert.encoder.layer[0].attention.self.query.base_layer.weight,
                               tiny_bert().bert.encoder.layer[0].attention.self.query.weight, atol=1e-6, rtol=0)

def test_dora_with_dropout_trains_dora_not_lora():
    "With dropout the fused path is off; the plain path must still rescale by m/||W + sBA||."
    l = DoraLayer(nn.Linear(8, 6)); l.update_layer("default", DoraConfig(r=2, dropout=0.5, init_lora_weights=False)); l.set_active(["default"])
    with torch.no_grad(): l.lora_magnitude_vector["default"].mul_(2)
    x = torch.randn(3, 8)
    W = l.base_layer.weight + l.get_delta_weight("default")
    want = x @ (l.lora_magnitude_vector["default"][:, None] * W / torch.linalg.norm(W, dim=1)[:, None]).T + l.base_layer.bias
    torch.testing.assert_close(l.eval()(x), want)
    l.train(); torch.manual_seed(0); y = l(x); torch.manual_seed(0)
    torch.testing.assert_close(y, l.forward_plain(x))
    assert not torch.allclose(y, want)   # dropout is on in training

def test_dora_merge_refuses_to_stack():
    pm = _nudge(get_peft_model(tiny_bert(), DoraConfig(r=2, target_modules=["query"])))
    pm.add_adapter("b", LoraConfig(r=2, target_modules=["query"]))
    pm.merge_adapter(["b"])
    with pytest.raises(ValueError, match="rescales the whole weight"): pm.merge_adapter(["default"])

def test_vera_without_projection_saves_only_the_seed(tmp_path):
    pm = _nudge(get_peft_model(tiny_llama(), VeraConfig(r=8, target_modules="all-linear", save_projection=False, projection_prng_key=5)))
    pm.save_adapter(tmp_path)
    from peft_notes.core import read_safetensors
    assert not any("vera_A" in k for k in read_safetensors(tmp_path / "adapter_model.safetensors"))
    back = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    with torch.no_grad(): assert torch.equal(back(X).logits, pm(X).logits)

def test_vera_shared_pair_moves_with_the_model_and_is_deleted_with_the_adapter():
    pm = get_peft_model(tiny_bert(), VeraConfig(r=8))
    pm.add_adapter("b", VeraConfig(r=4)); assert set(pm.adapter_shared) == {"default", "b"}
    pm.to(torch.float64)
    layer = pm.base_model.bert.encoder.layer[0].attention.self.query
    assert layer._shared["default"].vera_A.dtype == torch.float64
    pm.delete_adapter("b"); assert set(pm.adapter_shared) == {"default"}

@pytest.mark.parametrize("r", [2, 4])
def test_loha_both_forward_forms_equal_the_matrix(r):
    l = LohaLayer(nn.Linear(32, 32)); l.update_layer("default", LohaConfig(r=r, init_weights=False)); l.set_active(["default"])
    x = torch.randn(5, 32)
    torch.testing.assert_close(l.delta_forward(x, "default"), x @ l.delta("default").T, atol=1e-5, rtol=1e-5)

def test_lokr_decompose_both_and_factor():
    pm = get_peft_model(tiny_llama(), LokrConfig(r=1, decompose_both=True, decompose_factor=4, target_modules=["q_proj"], init_weights=False))
    l = pm.base_model.model.layers[0].self_attn.q_proj
    assert "default" in l.lokr_w1_a and "default" in l.lokr_w2_a and l._shape["default"] == (4, 8, 4, 8)
    x = torch.randn(3, 32)
    torch.testing.assert_close(l.delta_forward(x, "default"), x @ l.delta("default").T, atol=1e-5, rtol=1e-5)

def _loader(n=32):
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(0, 99, (10,), generator=g), "attention_mask": torch.ones(10, dtype=torch.long),
             "labels": torch.tensor(i % 2)} for i in range(n)]
    return torch.utils.data.DataLoader(rows, batch_size=8)

def test_fit_runs_the_adalora_hooks():
    from peft_notes.train import fit
    pm = get_peft_model(tiny_bert(), AdaloraConfig(init_r=6, target_r=2, tinit=2, tfinal=3, target_modules="all-linear"))
    fit(pm, _loader(), epochs=3, lr=2e-2, progress=False)   # 12 steps: pruning from step 3, final at step 9
    pattern = pm.saved_config().rank_pattern
    assert pm.peft_config["default"].rank_pattern is None   # training state lives on the layers, and is written at save time
    assert pattern is not None and sum(map(sum, pattern.values())) == 2 * len(pattern)
    assert sum(ranks_left(pm).values()) <= 2 * len(pattern)
    with tempfile.TemporaryDirectory() as d:
        pm.save_adapter(d)
        back = PeftModel.from_pretrained(tiny_bert(), d)
        assert back.peft_config["default"].rank_pattern == pattern == back.saved_config().rank_pattern

def test_adalora_orthogonality_penalty():
    pm = get_peft_model(tiny_bert(), AdaloraConfig(init_r=4, target_r=2, target_modules=["query"], orth_reg_weight=1.0))
    p = pm.extra_loss(); assert p.item() > 0 and p.requires_grad
    with torch.no_grad():
        for _, l in pm.adapter_context().layers():   # make P and Q orthonormal: the penalty vanishes
            l.lora_A["default"].copy_(torch.linalg.qr(torch.randn(32, 4))[0].T); l.lora_B["default"].copy_(torch.linalg.qr(torch.randn(32, 4))[0])
    assert pm.extra_loss().item() < 1e-5

def test_dylora_rank_is_sampled_per_step_and_kept_on_save(tmp_path):
    pm = get_peft_model(tiny_bert(), DyloraConfig(r=8, r_min=2, target_modules=["query"]))
    seen = set()
    for t in range(30):
        pm.before_step(t, 30); seen.add(pm.base_model.bert.encoder.layer[0].attention.self.query.train_rank["default"])
    assert seen <= set(range(2, 9)) and len(seen) > 3
    _nudge(pm); set_rank(pm, 3); pm.save_adapter(tmp_path)
    back = PeftModel.from_pretrained(tiny_bert(), tmp_path)
    assert back.peft_config["default"].eval_rank == 3
    with torch.no_grad(): assert torch.equal(back(X).logits, pm(X).logits)
    with pytest.raises(TypeError, match="not dylora"): set_rank(get_peft_model(tiny_bert(), LoraConfig()), 2)

def test_sora_proximal_step_is_soft_thresholding():
    pm = get_peft_model(tiny_bert(), SoraConfig(r=4, sparse_lambda=0.1, target_modules=["query"]))
    l = pm.base_model.bert.encoder.layer[0].attention.self.query
    with torch.no_grad(): l.lora_gate["default"].copy_(torch.tensor([0.5, -0.05, -0.3, 0.1]))
    pm.after_step(0, 1)
    torch.testing.assert_close(l.lora_gate["default"], torch.tensor([0.4, 0.0, -0.2, 0.0]))
    assert ranks_left(pm)["bert.encoder.layer.0.attention.self.query"] == 2

def test_dylora_merge_in_training_mode_uses_the_eval_rank():
    pm = _nudge(get_peft_model(tiny_bert(), DyloraConfig(r=8, target_modules=["query"])))
    w = pm.base_model.bert.encoder.layer[0].attention.self.query.base_layer.weight.detach().clone()
    pm.train(); pm.before_step(3, 10); pm.merge_adapter(); pm.before_step(4, 10); pm.eval(); pm.unmerge_adapter()
    torch.testing.assert_close(pm.base_model.bert.encoder.layer[0].attention.self.query.base_layer.weight, w, atol=1e-6, rtol=0)
