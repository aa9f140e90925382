"""LoRA through the shared matrix on three architectures, plus the behaviours the matrix does not cover."""
import pytest, torch
from peft_notes.core import AdapterLayer, PeftModel, get_peft_model
from peft_notes.models import load_minilm, tiny_bert, tiny_gpt2, tiny_llama
from peft_notes.reparam import LoraConfig
from peft_notes.testing import check_method

@pytest.mark.parametrize("make_model", [tiny_bert, tiny_llama, tiny_gpt2], ids=["bert", "llama", "gpt2"])
@pytest.mark.parametrize("kw", [dict(r=4, alpha=8), dict(r=4, alpha=8, use_rslora=True, dropout=0.1), dict(r=2, target_modules="all-linear")],
                         ids=["qv", "rslora-dropout", "all-linear"])
def test_matrix_tiny(make_model, kw):
    r = check_method(lambda: LoraConfig(**kw), make_model)
    assert r["unmerge_weight_err"] <= 1e-6 and r["merge_max_diff"] < 1e-5 and r["loss_after"] < r["loss_before"]

def test_matrix_minilm():
    r = check_method(lambda: LoraConfig(r=8, alpha=16, modules_to_save=["classifier"]), lambda: load_minilm(5)[0], steps=8)
    assert r["trainable"] == 6 * 2 * 8 * (384 + 384) + 384 * 5 + 5

def test_bias_all_trains_and_saves_biases(tmp_path):
    pm = get_peft_model(tiny_bert(), LoraConfig(r=2, bias="all"))
    names = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert any(n.endswith("attention.self.query.base_layer.bias") for n in names)
    assert any(n.endswith("LayerNorm.bias") for n in names)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if n.endswith("bias"): p.add_(0.1)
    x = torch.randint(0, 99, (2, 5))
    pm.save_adapter(tmp_path)
    back = PeftModel.from_pretrained(tiny_bert(), tmp_path)
    torch.testing.assert_close(back(x).logits, pm(x).logits, atol=0, rtol=0)

def test_lora_only_bias_is_the_wrapped_layers_bias():
    pm = get_peft_model(tiny_bert(), LoraConfig(r=2, bias="lora_only"))
    names = {n for n, p in pm.named_parameters() if p.requires_grad and n.endswith("bias")}
    assert names and all(".base_layer.bias" in n for n in names) and len(names) == 4  # q, v in 2 layers

def test_unload_returns_the_original_modules():
    base = tiny_llama(); q = base.model.layers[0].self_attn.q_proj
    pm = get_peft_model(base, LoraConfig(r=2))
    out = pm.unload()
    assert out is base and out.model.layers[0].self_attn.q_proj is q
    assert not any(isinstance(m, AdapterLayer) for m in out.modules())
    assert all(p.requires_grad for p in out.parameters())  # as it was before wrapping

def test_generate_passes_through():
    pm = get_peft_model(tiny_llama(), LoraConfig(r=2, init_lora_weights=False))
    out = pm.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 7)
    assert pm.config.model_type == "llama"

def test_set_adapter_trains_only_the_active_adapter():
    pm = get_peft_model(tiny_bert(), LoraConfig(r=2))
    pm.add_adapter("b", LoraConfig(r=3))
    assert {n.split(".")[-2] for n, p in pm.named_parameters() if p.requires_grad} == {"default"}
    pm.set_adapter("b")
    assert {n.split(".")[-2] for n, p in pm.named_parameters() if p.requires_grad} == {"b"}
    pm.delete_adapter("b")
    assert pm.active_adapter == "default"
    assert not any("lora_A.b" in n for n, _ in pm.named_parameters())

def test_disable_adapter_after_merge_is_the_base():
    base = tiny_bert(); x = torch.randint(0, 99, (2, 6)); y0 = base(x).logits.detach()
    pm = get_peft_model(base, LoraConfig(r=2, init_lora_weights=False))
    pm.merge_adapter()
    with pm.disable_adapter(): torch.testing.assert_close(pm(x).logits, y0, atol=1e-6, rtol=0)

def test_safe_merge_refuses_nan():
    pm = get_peft_model(tiny_bert(), LoraConfig(r=2))
    with torch.no_grad(): pm.base_model.bert.encoder.layer[0].attention.self.query.lora_B["default"].weight.fill_(float("nan"))
    w = pm.base_model.bert.encoder.layer[0].attention.self.query.base_layer.weight.clone()
    with pytest.raises(ValueError, match="non-finite"): pm.merge_adapter(safe_merge=True)
    assert torch.equal(pm.base_model.bert.encoder.layer[0].attention.self.query.base_layer.weight, w)

def test_trainable_report_counts():
    pm = get_peft_model(tiny_bert(), LoraConfig(r=4, target_modules=["query"]))
    rep = pm.trainable_report()
    assert rep.trainable == 2 * 4 * (32 + 32) and rep.adapter_bytes == 4 * rep.trainable
    assert 0 < rep.percent < 100 and "trainable%" in repr(rep)

def test_trains_under_transformers_trainer(tmp_path):
    import datasets
    from transformers import Trainer, TrainingArguments
    pm = get_peft_model(tiny_bert(), LoraConfig(r=4, modules_to_save=["classifier"]))
    g = torch.Generator().manual_seed(0)
    ds = datasets.Dataset.from_dict({"input_ids": torch.randint(0, 99, (64, 8), generator=g).tolist(),
                                     "labels": torch.randint(0, 2, (64,), generator=g).tolist()})
    before = {n: p.detach().clone() for n, p in pm.named_parameters()}
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=16, learning_rate=1e-2,
                             report_to=[], use_cpu=True, save_strategy="no", logging_steps=1)
    Trainer(model=pm, args=args, train_dataset=ds).train()  # keeps input_ids/labels: PeftModel.forward shows the base signature
    changed = {n for n, p in pm.named_parameters() if not torch.equal(p, before[n])}
    adapter = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert changed and changed <= adapter

def test_deepcopy_rebinds_forward():
    import copy, inspect
    pm = get_peft_model(tiny_bert(), LoraConfig(r=2))
    c = copy.deepcopy(pm)
    assert c.forward.__self__ is c and "input_ids" in inspect.signature(c.forward).parameters

# --- the fused forward/backward (LoraLinearFn) against the plain path of the equation ---
from torch import nn
from transformers.pytorch_utils import Conv1D
from peft_notes.reparam import LoraLayer, LoraLinearFn

def _layer(base, dropout=0.0, names=("default",)):
    layer = LoraLayer(base)
    for n in names: layer.update_layer(n, LoraConfig(r=3, alpha=6, dropout=dropout, init_lora_weights=False))
    layer.set_active(list(names))
    return layer

def _grads(layer, x, plain, seed=0):
    torch.manual_seed(seed)
    y = layer.forward_plain(x) if plain else layer(x)
    ps = [x] + [p for p in layer.parameters() if p.requires_grad]
    return y, torch.autograd.grad((y * torch.linspace(-1, 2, y.shape[-1])).square().sum(), ps)

@pytest.mark.parametrize("case", ["linear", "linear-nobias", "conv1d", "dropout", "base-trainable", "2d-input"])
def test_fused_path_equals_the_plain_path(case):
    base = {"linear-nobias": nn.Linear(10, 7, bias=False), "conv1d": Conv1D(7, 10)}.get(case, nn.Linear(10, 7))
    layer = _layer(base, dropout=0.4 if case == "dropout" else 0.0).train()
    if case == "base-trainable": base.requires_grad_(True)
    else: base.requires_grad_(False)
    x = torch.randn(*((6, 10) if case == "2d-input" else (2, 3, 10)), requires_grad=True)
    yf, gf = _grads(layer, x, plain=False); yp, gp = _grads(layer, x, plain=True)
    assert isinstance(yf.grad_fn, LoraLinearFn._backward_cls) and not isinstance(yp.grad_fn, LoraLinearFn._backward_cls)
    torch.testing.assert_close(yf, yp, atol=1e-6, rtol=1e-6)
    assert len(gf) == len(gp) == (1 + 2 + 1 + (base.bias is not None) if case == "base-trainable" else 3)
    for a, b in zip(gf, gp): torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

def test_fused_path_under_no_grad_and_in_eval_ignores_dropout():
    layer = _layer(nn.Linear(10, 7), dropout=0.5).eval()
    x = torch.randn(4, 10)
    with torch.no_grad(): a = layer(x); b = layer.forward_plain(x)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)

@pytest.mark.parametrize("case", ["two-active", "half-base", "autocast", "disabled"])
def test_plain_path_where_the_fused_one_does_not_apply(case):
    base = nn.Linear(10, 7).to(torch.bfloat16) if case == "half-base" else nn.Linear(10, 7)
    layer = _layer(base, names=("a", "b") if case == "two-active" else ("default",))
    x = torch.randn(2, 10, dtype=base.weight.dtype, requires_grad=True)
    if case == "disabled": layer.disabled = True
    if case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16): y = layer(x)
    else: y = layer(x)
    assert not isinstance(y.grad_fn, LoraLinearFn._backward_cls)
    if case == "two-active":   # both updates are applied
        expect = base(x) + sum(layer.lora_B[n](layer.lora_A[n](x)) * layer.scaling[n] for n in ("a", "b"))
        torch.testing.assert_close(y, expect)

# --- LoRA+ ---
from peft_notes.reparam import create_loraplus_optimizer
from peft_notes.train import fit

def test_loraplus_groups_and_lambda_one_is_plain_adamw():
    from torch.utils.data import DataLoader
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(0, 99, (6,), generator=g), "labels": torch.tensor(i % 2)} for i in range(16)]
    dl = lambda: DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    def run(ratio):
        pm = get_peft_model(tiny_bert(), LoraConfig(r=2, modules_to_save=["classifier"]))
        opt = create_loraplus_optimizer(pm, lr=1e-2, loraplus_lr_ratio=ratio) if ratio else None
        return pm, opt, fit(pm, dl(), epochs=2, lr=1e-2, optimizer=opt, progress=False).losses
    pm, opt, plain = run(None)
    pm1, opt1, one = run(1.0)
    assert one == plain                                  # λ = 1 is the default optimizer, step for step
    pm16, opt16, fast = run(16.0)
    assert fast != plain
    b = [p for n, p in pm16.named_parameters() if "lora_B" in n]
    assert [len(g["params"]) for g in opt16.param_groups] == [len([p for p in pm16.parameters() if p.requires_grad]) - len(b), len(b)]
    assert {id(p) for p in opt16.param_groups[1]["params"]} == {id(p) for p in b}
    with pytest.raises(ValueError, match="loraplus_lr_ratio must be positive"): create_loraplus_optimizer(pm16, loraplus_lr_ratio=0)
