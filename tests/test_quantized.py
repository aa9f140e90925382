"""The quantized family's base (chapter *Quantized bases*): every weight-update method of the reparameterized family trains over a QuantizedLinear."""
import pytest, torch
from torch import nn
from peft_notes.core import get_peft_model, list_methods
from peft_notes.models import tiny_bert, tiny_llama
from peft_notes.methods.quantized.formats import QuantConfig, QuantizedLinear, quantize_model

WEIGHT_UPDATES = ["lora", "dora", "vera", "loha", "lokr", "adalora", "dylora", "sora"]   # the family table's methods: they wrap QuantizedLinear

@pytest.mark.parametrize("method", WEIGHT_UPDATES)
@pytest.mark.parametrize("make", [tiny_bert, tiny_llama], ids=["bert", "llama"])
def test_weight_update_methods_train_over_a_quantized_base(method, make):
    "Over an NF4 base: the outputs start at the quantized base's, every trained tensor gets a non-zero gradient within two steps, the base's codes never change, and merging is refused by name."
    torch.manual_seed(0)
    model = quantize_model(make(), QuantConfig("nf4", block_size=32))
    codes = {n: b.clone() for n, b in model.named_buffers()}
    x = {"input_ids": torch.randint(3, 90, (2, 7))}
    with torch.no_grad(): y0 = model.eval()(**x).logits
    cfg = list_methods()[method]()
    if method == "adalora": cfg.total_step = 10
    pm = get_peft_model(model, cfg)
    assert any(isinstance(m, QuantizedLinear) for m in pm.modules())
    with torch.no_grad(): assert torch.allclose(pm.eval()(**x).logits, y0, atol=1e-6)
    params = {n: p for n, p in pm.named_parameters() if p.requires_grad}
    opt = torch.optim.Adam(params.values(), lr=1e-2); pm.train(); seen = set()
    for step in range(3):
        opt.zero_grad(); loss = pm(**x).logits.float().pow(2).mean(); loss.backward()
        seen |= {n for n, p in params.items() if p.grad is not None and p.grad.abs().sum() > 0}; opt.step()
    assert seen == set(params), sorted(set(params) - seen)[:5]
    assert all(torch.equal(b, codes[n.removeprefix("base_model.")]) for n, b in pm.named_buffers() if n.removeprefix("base_model.") in codes and b.dtype == torch.uint8)
    with pytest.raises(TypeError, match="QuantizedLinear stores its weight as nf4 codes"): pm.merge_adapter()

def test_a_qlora_adapter_on_a_base_of_the_wrong_shape_is_refused_and_the_model_is_unchanged(tmp_path):
    "Loading a saved QLoRA onto a full-precision base of another width: a clear error, and the base keeps its full-precision layers (the quantization is undone)."
    from peft_notes.core import PeftModel
    from peft_notes.methods.quantized.qlora import QLoraConfig
    pm = get_peft_model(tiny_bert(), QLoraConfig(r=4))
    pm.save_adapter(tmp_path)
    other = tiny_bert(hidden_size=64, intermediate_size=128)
    before = {n: type(m) for n, m in other.named_modules()}
    weights = {n: p.detach().clone() for n, p in other.named_parameters()}
    with pytest.raises(ValueError, match="shape"): PeftModel.from_pretrained(other, tmp_path)
    assert {n: type(m) for n, m in other.named_modules()} == before and not any(isinstance(m, QuantizedLinear) for m in other.modules())
    assert all(torch.equal(p, weights[n]) for n, p in other.named_parameters())
