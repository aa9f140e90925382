"""Bad input: a clear error that names the problem, and nothing lost (atomic saves, untouched models, no pickle)."""
import json, pickle, shutil
import pytest, torch
from peft_notes.core import AdapterLayer, PeftConfig, PeftModel, get_peft_model
from peft_notes.models import tiny_bert, tiny_llama
from peft_notes.reparam import LoraConfig

def _state(m): return {k: v.clone() for k, v in m.state_dict().items()}
def _same(m, s): return set(m.state_dict()) == set(s) and all(torch.equal(v, s[k]) for k, v in m.state_dict().items())

@pytest.fixture
def saved(tmp_path):
    pm = get_peft_model(tiny_bert(), LoraConfig(r=2, init_lora_weights=False, modules_to_save=["classifier"]))
    pm.save_adapter(tmp_path / "a")
    return tmp_path / "a"

def test_unknown_target_lists_what_exists():
    base = tiny_bert(); s = _state(base)
    with pytest.raises(ValueError, match=r"matched no module.*bert\.encoder\.layer\.0\.attention\.self\.query"):
        get_peft_model(base, LoraConfig(target_modules=["q_proj"]))
    assert _same(base, s) and all(p.requires_grad for p in base.parameters())

def test_empty_target_list():
    with pytest.raises(ValueError, match="target_modules is an empty list"): LoraConfig(target_modules=[])

def test_unwrappable_module_type_is_named():
    with pytest.raises(TypeError, match=r"cannot wrap bert\.embeddings \(BertEmbeddings\); it wraps Linear, Conv1D"):
        get_peft_model(tiny_bert(), LoraConfig(target_modules=["embeddings"]))

def test_no_default_targets_for_unknown_architecture():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="no default target_modules for model type None"): get_peft_model(model, LoraConfig())

@pytest.mark.parametrize("kw,msg", [(dict(r=0), "r must be a positive rank"), (dict(r=-3), "r must be a positive rank"),
                                     (dict(alpha=0), "alpha must be positive"), (dict(alpha=-1.5), "alpha must be positive"),
                                     (dict(dropout=1.0), "dropout must be in"), (dict(r=2.5), "r must be int"), (dict(r=True), "r must be int")])
def test_bad_hyperparameters(kw, msg):
    with pytest.raises((ValueError, TypeError), match=msg): LoraConfig(**kw)

def test_shape_mismatch_names_keys_and_leaves_model_unchanged(saved):
    other = tiny_bert(hidden_size=48, num_attention_heads=4); s = _state(other)
    with pytest.raises(ValueError, match=r"shape mismatches \(\d+\): base_model\.model\.bert\.encoder\.layer\.0\.attention\.self\.query\.lora_A\.weight: file \(2, 32\) vs model \(2, 48\)"):
        PeftModel.from_pretrained(other, saved)
    assert _same(other, s) and not any(isinstance(m, AdapterLayer) for m in other.modules())
    assert all(p.requires_grad for p in other.parameters())

def test_missing_and_unexpected_keys_are_named(saved, tmp_path):
    base = tiny_llama(); s = _state(base)
    with pytest.raises(ValueError, match=r"modules_to_save: no module named 'classifier'; top-level modules: model, lm_head"): PeftModel.from_pretrained(base, saved)
    assert _same(base, s)
    # same architecture, fewer layers: the file has keys the model lacks
    small = tiny_bert(num_hidden_layers=1); s = _state(small)
    with pytest.raises(ValueError, match=r"unexpected keys \(\d+\): base_model\.model\.bert\.encoder\.layer\.1"):
        PeftModel.from_pretrained(small, saved)
    assert _same(small, s)
    # a file with a key removed
    from safetensors.torch import load_file, save_file
    d = tmp_path / "cut"; shutil.copytree(saved, d)
    t = load_file(d / "adapter_model.safetensors"); k = sorted(t)[0]; del t[k]; save_file(t, d / "adapter_model.safetensors")
    with pytest.raises(ValueError, match=r"missing keys \(1\): " + k.replace(".", r"\.")): PeftModel.from_pretrained(tiny_bert(), d)

@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_weights(saved, damage):
    f = saved / "adapter_model.safetensors"; data = f.read_bytes()
    f.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00\x01not a safetensors file" * 10, "empty": b""}[damage])
    base = tiny_bert(); s = _state(base)
    with pytest.raises(ValueError, match="not a readable safetensors file"): PeftModel.from_pretrained(base, saved)
    assert _same(base, s)

@pytest.mark.parametrize("cfg,msg", [({"method": "no_such_method", "r": 2}, "unknown method 'no_such_method'"),
                                     ({"method": "lora", "r": "eight"}, "LoraConfig.r must be int"),
                                     ({"method": "lora", "r": 2, "lora_alpha": 4}, r"unknown field\(s\) \['lora_alpha'\]"),
                                     ({"method": "lora", "target_modules": 3}, "target_modules must be"),
                                     (["lora"], "must be a JSON object")])
def test_bad_config_json(saved, cfg, msg):
    (saved / "adapter_config.json").write_text(json.dumps(cfg))
    base = tiny_bert(); s = _state(base)
    with pytest.raises((ValueError, TypeError), match=msg): PeftModel.from_pretrained(base, saved)
    assert _same(base, s)

def test_config_not_json(saved):
    (saved / "adapter_config.json").write_text("{ not json")
    with pytest.raises(ValueError, match="not valid JSON"): PeftModel.from_pretrained(tiny_bert(), saved)

def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"): PeftModel.from_pretrained(tiny_bert(), tmp_path)

def test_interrupted_save_keeps_the_earlier_adapter(saved, monkeypatch):
    before = {p.name: p.read_bytes() for p in saved.iterdir()}
    pm = get_peft_model(tiny_bert(), LoraConfig(r=2, init_lora_weights=False, modules_to_save=["classifier"]))
    import peft_notes.core.files as core
    def boom(tensors, path, metadata=None):
        open(path, "wb").write(b"half a file"); raise OSError("disk full (simulated)")
    monkeypatch.setattr(core, "save_file", boom)
    with pytest.raises(OSError, match="disk full"): pm.save_adapter(saved)
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before  # no temporary files left, old adapter intact

def test_interrupted_config_write_keeps_the_earlier_adapter(saved, monkeypatch):
    before = {p.name: p.read_bytes() for p in saved.iterdir()}
    pm = get_peft_model(tiny_bert(), LoraConfig(r=4, modules_to_save=["classifier"]))
    def boom(self, path=None): raise RuntimeError("interrupted (simulated)")
    monkeypatch.setattr(LoraConfig, "to_json", boom)
    with pytest.raises(RuntimeError, match="interrupted"): pm.save_adapter(saved)
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before

def test_loading_never_unpickles(saved, monkeypatch):
    def no(*a, **k): raise AssertionError("unpickling during load")
    monkeypatch.setattr(pickle, "load", no); monkeypatch.setattr(pickle, "loads", no); monkeypatch.setattr(torch, "load", no)
    pm = PeftModel.from_pretrained(tiny_bert(), saved)
    assert pm.trainable_report().trainable == 0

def test_pickle_file_in_place_of_weights_is_refused(saved):
    class Evil:
        def __reduce__(self): return (exec, ("raise SystemExit('pickle ran')",))
    (saved / "adapter_model.safetensors").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ValueError, match="not a readable safetensors file"): PeftModel.from_pretrained(tiny_bert(), saved)

def test_failed_load_adapter_leaves_peft_model_as_it_was(saved):
    pm = get_peft_model(tiny_bert(), LoraConfig(r=2, target_modules=["query"]))
    s, names = _state(pm), dict(pm.peft_config)
    (saved / "adapter_model.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError): pm.load_adapter(saved, "other")
    assert _same(pm, s) and dict(pm.peft_config) == names

def test_bad_adapter_names_and_calls():
    pm = get_peft_model(tiny_bert(), LoraConfig(r=2))
    with pytest.raises(ValueError, match="must be an identifier"): pm.add_adapter("a.b", LoraConfig(r=2))
    with pytest.raises(ValueError, match="exists already"): pm.add_adapter("default", LoraConfig(r=2))
    with pytest.raises(KeyError, match="no adapter 'x'"): pm.set_adapter("x")
    with pytest.raises(ValueError, match="only adapter"): pm.delete_adapter("default")
    with pytest.raises(TypeError, match="already a PeftModel"): get_peft_model(pm, LoraConfig())

def test_load_without_importing_the_family(saved):
    "A fresh process that imports only core can load a LoRA adapter: the registry finds the family itself."
    import subprocess, sys
    code = ("import sys; from peft_notes.core import PeftModel; from peft_notes.models import tiny_bert; "
            f"m = PeftModel.from_pretrained(tiny_bert(), {str(saved)!r}); print(type(m.peft_config['default']).__module__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "peft_notes.methods.reparameterized.lora", r.stderr
