"""A failed load loses nothing, for every way a method changes a model (issue 24): a new adapter that fails to load leaves
the model bit-identical with no adapter layer and no hook left; refilling a live adapter (`load_adapter_weights`) from a
file that fails keeps the adapter's values. And the bad files it must refuse: NaN/Inf, tensors of another kind, a
narrowing cast (warned), another base model (warned), a path in an adapter name."""
import json, warnings
import pytest, torch
from safetensors.torch import save_file
import peft_notes.core.files as files
from peft_notes.core import AdapterLayer, PeftModel, get_peft_model, list_methods
from peft_notes.core.files import read_safetensors
from peft_notes.models import tiny_bert

X = torch.randint(3, 99, (3, 9), generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 0])
KINDS = {   # one method per way of changing a model (DESIGN.md's four kinds; a hybrid composes them and taps attention)
    "layer": lambda: list_methods()["lora"](r=2),
    "inputs": lambda: list_methods()["prompt_tuning"](num_virtual_tokens=3),
    "tensor delta": lambda: list_methods()["bitfit"](),
    "sparse delta": lambda: list_methods()["fish_mask"](density=0.05),
    "hybrid": lambda: list_methods()["unipelt"](),
}

def _state(m): return {k: v.clone() for k, v in m.state_dict().items()}
def _same(m, s): return set(m.state_dict()) == set(s) and all(torch.equal(v, s[k]) for k, v in m.state_dict().items())
def _hooks(m): return sum(len(x._forward_pre_hooks) + len(x._forward_hooks) for x in m.modules())

def _trained(kind):
    "An adapter of this kind with values that are not its init (so a rolled-back value is told from a loaded one)."
    pm = get_peft_model(tiny_bert(), KINDS[kind]())
    pm.before_training([{"input_ids": X, "labels": Y}])          # FishMask chooses its entries from data
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad: p.add_(torch.randn_like(p) * 0.1)
    return pm

def _save_variant(pm, folder, change=None):
    "Save pm's adapter to `folder`, then apply `change(tensors)` to the saved tensors."
    pm.save_adapter(folder)
    if change:
        t = read_safetensors(folder / "adapter_model.safetensors"); change(t)
        save_file(t, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    return folder

def _largest_float(t): return max((k for k in t if t[k].is_floating_point()), key=lambda k: t[k].numel())

@pytest.fixture
def fail_after_copy(monkeypatch):
    "A load that fails after its tensors were copied in (as a layer's own check in after_load would)."
    real = files._finish_load
    def boom(pm, name): real(pm, name); raise RuntimeError("after_load failed (simulated)")
    monkeypatch.setattr(files, "_finish_load", boom)

@pytest.mark.parametrize("kind", KINDS)
def test_failed_load_into_a_fresh_model_leaves_it_bit_identical(kind, tmp_path, fail_after_copy):
    folder = _save_variant(_trained(kind), tmp_path / "a")
    base = tiny_bert(); s, hooks = _state(base), _hooks(base)
    with pytest.raises(RuntimeError, match="simulated"): PeftModel.from_pretrained(base, folder)
    assert _same(base, s) and _hooks(base) == hooks and not any(isinstance(m, AdapterLayer) for m in base.modules())
    assert all(p.requires_grad for p in base.parameters())

@pytest.mark.parametrize("kind", KINDS)
def test_failed_load_adapter_leaves_the_peft_model_as_it_was(kind, tmp_path, fail_after_copy):
    folder = _save_variant(_trained(kind), tmp_path / "a")
    pm = get_peft_model(tiny_bert(), list_methods()["lora"](r=2, target_modules=["query"]))
    s, hooks, names = _state(pm), _hooks(pm), dict(pm.peft_config)
    with pytest.raises(RuntimeError, match="simulated"): pm.load_adapter(folder, "other")
    assert _same(pm, s) and _hooks(pm) == hooks and dict(pm.peft_config) == names

@pytest.mark.parametrize("kind", KINDS)
def test_failed_refill_keeps_the_adapter_values(kind, tmp_path, fail_after_copy):
    "load_adapter_weights copies into a live adapter: a failure after the copy puts the earlier values back."
    pm = _trained(kind)
    folder = _save_variant(_trained(kind) if kind != "sparse delta" else pm, tmp_path / "a",
                           lambda t: t.__setitem__(k := _largest_float(t), t[k] + 1))   # other values, same shapes and indices
    s, hooks = _state(pm), _hooks(pm)
    with pytest.raises(RuntimeError, match="simulated"): pm.load_adapter_weights(folder)
    assert _same(pm, s) and _hooks(pm) == hooks

def test_sparse_refill_with_reversed_indices_keeps_the_adapter(tmp_path):
    "The review's case: FishMask's reversed indices are refused by its own after_load, after the copy; nothing of them stays."
    pm = _trained("sparse delta")
    k = lambda t: max((k for k in t if k.endswith("sparse_index.weight")), key=lambda k: t[k].numel())
    folder = _save_variant(pm, tmp_path / "a", lambda t: t.__setitem__(kk := k(t), t[kk].flip(0)))
    s = _state(pm)
    with pytest.raises(ValueError, match="strictly increasing"): pm.load_adapter_weights(folder)
    assert _same(pm, s)
    with torch.no_grad(): y = pm(input_ids=X).logits
    pm.load_adapter_weights(_save_variant(pm, tmp_path / "b"))     # a good file still loads after the refusal
    with torch.no_grad(): assert torch.equal(pm(input_ids=X).logits, y)

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("how", ["from_pretrained", "load_adapter_weights"])
def test_non_finite_values_are_refused_naming_the_tensor(bad, how, tmp_path):
    pm = _trained("layer"); name = {}
    def poison(t): name["k"] = k = _largest_float(t); t[k].view(-1)[0] = bad
    folder = _save_variant(pm, tmp_path / "a", poison)
    target = tiny_bert() if how == "from_pretrained" else pm
    s = _state(target)
    with pytest.raises(ValueError, match=r"NaN or Inf in 1 tensor\(s\): " + name["k"].replace(".", r"\.")):
        PeftModel.from_pretrained(target, folder) if how == "from_pretrained" else pm.load_adapter_weights(folder)
    assert _same(target, s)

def test_a_tensor_of_another_kind_is_refused(tmp_path):
    pm = _trained("layer")
    folder = _save_variant(pm, tmp_path / "a", lambda t: t.__setitem__(k := _largest_float(t), t[k].to(torch.int32)))
    s = _state(pm)
    with pytest.raises(ValueError, match=r"another kind than the model's.*file torch\.int32 vs model torch\.float32"): pm.load_adapter_weights(folder)
    assert _same(pm, s)

def test_integer_indices_that_do_not_fit_are_refused(tmp_path):
    pm = _trained("sparse delta")
    k = lambda t: next(k for k in t if k.endswith("sparse_index.weight"))
    def widen(t):
        kk = k(t); v = t[kk].long(); v[-1] = 2**40; t[kk] = v   # int64 that an int32 index cannot hold
    folder = _save_variant(pm, tmp_path / "a", widen)
    s = _state(pm)
    assert pm.adapter_state_dict()[k(read_safetensors(folder / "adapter_model.safetensors"))].dtype == torch.int32   # the model keeps int32 indices: an int64 file must fit them
    with pytest.raises(ValueError, match="integers that do not fit"): pm.load_adapter_weights(folder)
    assert _same(pm, s)

def test_upcast_is_silent_and_a_narrowing_cast_is_warned(tmp_path):
    pm = _trained("layer")
    half = _save_variant(pm, tmp_path / "half", lambda t: [t.__setitem__(k, v.to(torch.bfloat16)) for k, v in list(t.items()) if v.is_floating_point()])
    with warnings.catch_warnings(): warnings.simplefilter("error"); pm.load_adapter_weights(half)   # bf16 -> fp32: exact, no warning
    full = _save_variant(pm, tmp_path / "full")
    pm.to(torch.bfloat16)
    with pytest.warns(UserWarning, match=r"cast to the model's narrower dtype.*torch\.float32 -> torch\.bfloat16"): pm.load_adapter_weights(full)

def test_another_base_model_is_warned_naming_both(tmp_path):
    pm = _trained("layer"); folder = _save_variant(pm, tmp_path / "a")
    cfg = json.loads((folder / "adapter_config.json").read_text()); cfg["base_model_name_or_path"] = "org/model-a"
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    other = tiny_bert(); other.config._name_or_path = "org/model-b"
    with pytest.warns(UserWarning, match=r"trained on base model 'org/model-a', but is being loaded into 'org/model-b'"):
        PeftModel.from_pretrained(other, folder)
    same = tiny_bert(); same.config._name_or_path = "org/model-a"
    with warnings.catch_warnings(): warnings.simplefilter("error"); PeftModel.from_pretrained(same, folder)

@pytest.mark.parametrize("name", ["../evil", "a/b", "..", "/abs", "x\\y"])
def test_a_path_in_an_adapter_name_is_refused_and_nothing_written(name, tmp_path):
    "Adapter names become folder names (a Trainer checkpoint keeps each further adapter in <dir>/<name>): no path may hide in one."
    folder = _save_variant(_trained("layer"), tmp_path / "a")
    base = tiny_bert(); s = _state(base)
    with pytest.raises(ValueError, match="must be an identifier"): PeftModel.from_pretrained(base, folder, adapter_name=name)
    assert _same(base, s) and not any(isinstance(m, AdapterLayer) for m in base.modules())
    pm = get_peft_model(tiny_bert(), list_methods()["lora"](r=2)); before = _state(pm)
    with pytest.raises(ValueError, match="must be an identifier"): pm.load_adapter(folder, name)
    with pytest.raises(ValueError, match="must be an identifier"): get_peft_model(tiny_bert(), list_methods()["lora"](r=2), adapter_name=name)
    assert _same(pm, before) and list(pm.peft_config) == ["default"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]

def test_the_shipped_minilm_records_its_hub_name(tmp_path):
    "An adapter trained on the shipped MiniLM names its base by the hub id, not this install's path: it loads on another machine without a warning."
    from peft_notes.models import MINILM, load_minilm
    pm = get_peft_model(load_minilm()[0], list_methods()["lora"](r=2)); pm.save_adapter(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"] == MINILM
    with warnings.catch_warnings(): warnings.simplefilter("error"); PeftModel.from_pretrained(load_minilm()[0], tmp_path)

def test_a_refused_merge_undoes_the_layers_merged_before_it():
    "merge_adapter is all or nothing: the last layer refuses (safe_merge, a NaN), and the layers merged before it are unmerged."
    import torch
    from peft_notes.core import get_peft_model, list_methods
    from peft_notes.models import tiny_bert
    pm = get_peft_model(tiny_bert(), list_methods()["lora"](init_lora_weights=False))
    layers = [l for _, l in pm._layers(innermost_first=True)]
    with torch.no_grad(): layers[-1].lora_B["default"].weight[0, 0] = float("nan")
    before = {n: p.detach().clone() for n, p in pm.base_model.named_parameters() if not p.requires_grad}
    with pytest.raises(ValueError, match="non-finite"): pm.merge_adapter(safe_merge=True)
    assert not any(l.merged or l.merge_records for l in layers)   # the first layers merged before the last refused: undone
    assert all(torch.allclose(p, before[n], atol=1e-6) for n, p in pm.base_model.named_parameters() if n in before)

def test_a_fold_that_scales_a_missing_tensor_is_refused_by_name():
    "A method whose fold scales a bias the module does not have gets an error naming it, and the weight is left as it was."
    from torch import nn
    from peft_notes.core import Fold
    class ScaleBias(AdapterLayer):
        adapter_layer_names = ("s",)
        def __init__(self, base): super().__init__(base); self.s = nn.ParameterDict()
        def update_layer(self, name, cfg=None): self.s[name] = nn.Parameter(torch.full((3,), 2.0))
        def fold(self, name): return {"weight": Fold(scale=self.s[name].detach()[:, None]), "bias": Fold(scale=self.s[name].detach())}
    lin = nn.Linear(4, 3, bias=False); w0 = lin.weight.detach().clone()
    t = ScaleBias(lin); t.update_layer("a"); t.set_active(["a"])
    with pytest.raises(ValueError, match="scales 'bias', which Linear does not have"): t.merge()
    assert not t.merged and torch.equal(lin.weight, w0) and lin.bias is None
