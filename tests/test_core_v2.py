"""Core v2's promises: configs are values, keyword-safe layers, saves atomic as a pair, failed loads roll back bit for bit,
and a method written outside the package with only the public protocol gets the whole test matrix and the harness."""
import json, os, subprocess, sys, textwrap
from dataclasses import fields
import pytest, torch
from peft_notes.core import PeftModel, get_peft_model, list_methods, import_methods
import peft_notes.core.files as files
from peft_notes.models import tiny_bert, tiny_gpt2, tiny_llama
from peft_notes.reparam import AdaloraConfig, DoraConfig, DyloraConfig, LoraConfig, set_rank
from peft_notes.testing import check_method

X = torch.randint(0, 99, (2, 7), generator=torch.Generator().manual_seed(0))

def _nudge(pm, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad: p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return pm.eval()

def _state(model):
    "Everything a user could observe of a model: every tensor (bits), its module tree and which parameters train."
    return ({k: v.clone() for k, v in model.state_dict().items()}, [(n, type(m).__name__) for n, m in model.named_modules()],
            {n: p.requires_grad for n, p in model.named_parameters()})

def _same(a, b):
    assert a[1] == b[1], "module tree changed"
    assert a[2] == b[2], "requires_grad flags changed"
    assert a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0]), \
        f"tensors changed: {[k for k in a[0] if not torch.equal(a[0][k], b[0].get(k, torch.empty(0)))][:3]}"

# ---------------- configs are values ----------------
def test_add_adapter_keeps_its_own_copy_of_the_config():
    cfg = LoraConfig(r=2)
    pm = get_peft_model(tiny_bert(), cfg); pm.add_adapter("b", cfg)
    assert pm.peft_config["default"] is not cfg and pm.peft_config["b"] is not pm.peft_config["default"]
    assert pm.peft_config["default"] == cfg

def test_loading_for_inference_does_not_write_to_the_callers_config(tmp_path):
    cfg = LoraConfig(r=2)
    get_peft_model(tiny_bert(), cfg).save_adapter(tmp_path)
    pm = PeftModel.from_pretrained(tiny_bert(), tmp_path, config=cfg)
    assert cfg.inference_mode is False and pm.peft_config["default"].inference_mode is True

def test_training_state_lives_on_the_model_and_is_saved(tmp_path):
    cfg = DyloraConfig(r=4, target_modules=["query"])
    pm = _nudge(get_peft_model(tiny_bert(), cfg)); set_rank(pm, 2)
    assert cfg.eval_rank is None and pm.peft_config["default"].eval_rank is None and pm.saved_config().eval_rank == 2
    pm.save_adapter(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["eval_rank"] == 2
    back = PeftModel.from_pretrained(tiny_bert(), tmp_path)
    with torch.no_grad(): assert torch.equal(back(X).logits, pm(X).logits)

# ---------------- keyword-safe layers ----------------
@pytest.mark.parametrize("make,path", [(tiny_bert, "bert.encoder.layer.0.attention.self.query"), (tiny_gpt2, "transformer.h.0.attn.c_attn")])
def test_wrapped_layers_accept_their_input_by_keyword(make, path):
    pm = _nudge(get_peft_model(make(), LoraConfig(r=2, target_modules=[path.rsplit(".", 1)[1]])))
    layer = pm.base_model.get_submodule(path)
    x = torch.randn(2, 5, layer.in_features)
    key = "input" if isinstance(layer.base_layer, torch.nn.Linear) else "x"   # nn.Linear's argument is `input`, Conv1D's `x`
    with torch.no_grad():
        pos, kw = layer(x), layer(**{key: x})
        assert torch.allclose(pos, kw, atol=1e-6) and not torch.allclose(pos, layer.base_layer(x))

# ---------------- saves atomic as a pair ----------------
def _adapter(seed):
    return _nudge(get_peft_model(tiny_bert(), LoraConfig(r=2 + seed, modules_to_save=["classifier"])), seed)

def _loaded(d):
    pm = PeftModel.from_pretrained(tiny_bert(), d)
    return pm.peft_config["default"].r, {k: v for k, v in pm.adapter_state_dict().items()}

def _is(loaded, pm):
    r, t = loaded
    want = pm.adapter_state_dict()
    return r == pm.peft_config["default"].r and t.keys() == want.keys() and all(torch.equal(t[k], want[k]) for k in t)

class Crash(BaseException): "A stop mid-save (power loss, SIGKILL): nothing after it runs."

@pytest.mark.parametrize("where", ["weights", "config", "replace-1", "replace-2", "replace-3", "unlink"])
def test_an_interrupted_save_leaves_the_old_adapter_or_the_new_one(tmp_path, monkeypatch, where):
    old, new = _adapter(0), _adapter(1)
    old.save_adapter(tmp_path)
    calls = {"replace": 0}
    real_replace, real_unlink, real_save = os.replace, type(tmp_path).unlink, files.save_file
    def replace(a, b):
        calls["replace"] += 1
        if where == f"replace-{calls['replace']}": raise Crash
        return real_replace(a, b)
    def unlink(self, *a, **k):
        if where == "unlink" and self.name == files.PENDING: raise Crash
        return real_unlink(self, *a, **k)
    def save_file(t, p, metadata=None):
        if where == "weights": open(p, "wb").write(b"half"); raise Crash
        return real_save(t, p, metadata=metadata)
    monkeypatch.setattr(files.os, "replace", replace); monkeypatch.setattr(type(tmp_path), "unlink", unlink)
    monkeypatch.setattr(files, "save_file", save_file)
    if where == "config": monkeypatch.setattr(LoraConfig, "to_json", lambda self, p=None: (open(p, "w").write("{"), (_ for _ in ()).throw(Crash())))
    with pytest.raises(Crash): new.save_adapter(tmp_path)
    monkeypatch.undo()
    seen = _loaded(tmp_path)
    committed = where not in ("weights", "config", "replace-1")   # the marker's rename is the commit point
    assert _is(seen, new if committed else old), f"interrupted at {where}: the folder reads as neither the old nor the new adapter"
    new.save_adapter(tmp_path)                                      # the next save finishes or drops what was left
    assert _is(_loaded(tmp_path), new) and sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]

# ---------------- failed loads roll back bit for bit ----------------
@pytest.mark.parametrize("kind", ["lora", "pissa", "dora"])
def test_a_load_that_fails_after_injection_leaves_the_model_bit_identical(tmp_path, kind):
    make = {"lora": lambda r: LoraConfig(r=r, modules_to_save=["classifier"]), "pissa": lambda r: LoraConfig(r=r, init_lora_weights="pissa"),
            "dora": lambda r: DoraConfig(r=r)}[kind]
    get_peft_model(tiny_bert(), make(4)).save_adapter(tmp_path)
    model = tiny_bert().train(); before = _state(model)
    with pytest.raises(ValueError, match="shape mismatches"): PeftModel.from_pretrained(model, tmp_path, config=make(2))
    _same(before, _state(model)); assert model.training

def test_a_failed_load_adapter_leaves_the_peft_model_as_it_was(tmp_path):
    get_peft_model(tiny_bert(), LoraConfig(r=4, init_lora_weights="pissa")).save_adapter(tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text()); cfg["r"] = 2
    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    pm = _nudge(get_peft_model(tiny_bert(), LoraConfig(r=2, target_modules=["key"])))
    before = _state(pm)
    with pytest.raises(ValueError, match="shape mismatches"): pm.load_adapter(tmp_path, "other")
    _same(before, _state(pm)); assert list(pm.peft_config) == ["default"]

# ---------------- a method from outside the package ----------------
RANK1 = '''
"A method written outside peft_notes with the public protocol only: a rank-one update u vᵀ of each target."
from dataclasses import dataclass
from typing import ClassVar
import torch
from torch import nn
from peft_notes.core import LinearAdapterLayer, PeftConfig, QV_TARGETS, register_method

class RankOneLayer(LinearAdapterLayer):
    adapter_layer_names = ("rank1_u", "rank1_v")
    other_param_names = ("steps",)
    def __init__(self, base_layer):
        super().__init__(base_layer)
        self.rank1_u, self.rank1_v, self.steps = nn.ParameterDict(), nn.ParameterDict(), {}
    def update_layer(self, name, cfg):
        self.rank1_u[name] = nn.Parameter(torch.zeros(self.out_features, dtype=self.adapter_dtype))    # u = 0: the base at init
        self.rank1_v[name] = nn.Parameter(torch.randn(self.in_features, dtype=self.adapter_dtype) / self.in_features ** 0.5)
        self.steps[name] = cfg.steps_trained
    def combine(self, x, result, name):   # y = Wx + b + u (vᵀx)
        return result + ((x.to(self.adapter_dtype) @ self.rank1_v[name])[..., None] * self.rank1_u[name]).to(result.dtype)
    def get_delta_weight(self, name):
        return self.to_weight_layout(torch.outer(self.rank1_u[name], self.rank1_v[name]).detach())

@register_method("rank1_ext")
@dataclass
class RankOneConfig(PeftConfig):
    steps_trained: int = 0 # optimizer steps this adapter has seen (training state, written when saved)
    layer_cls: ClassVar[type] = RankOneLayer
    default_target_modules: ClassVar[dict] = QV_TARGETS
    def after_step(self, ctx, step, total):
        for _, l in ctx.layers(RankOneLayer): l.steps[ctx.name] += 1
    def saved_state(self, ctx):
        return {"steps_trained": ctx.layers(RankOneLayer)[0][1].steps[ctx.name]}
'''

@pytest.fixture(scope="module")
def ext_module(tmp_path_factory):
    p = tmp_path_factory.mktemp("ext") / "rank1_ext_method.py"
    p.write_text(RANK1)
    return p

def test_external_method_gets_the_whole_matrix(ext_module):
    cls = import_methods(str(ext_module))["rank1_ext"]
    assert cls.__module__ == "rank1_ext_method" and not cls.__module__.startswith("peft_notes")
    for make in (tiny_bert, tiny_llama, tiny_gpt2):
        r = check_method(cls, make)
        assert r["merge_max_diff"] <= 1e-5 and r["loss_after"] < r["loss_before"]
    pm = get_peft_model(tiny_bert(), cls())
    for t in range(3): pm.after_step(t, 3)
    assert pm.saved_config().steps_trained == 3 and pm.peft_config["default"].steps_trained == 0

def test_external_method_runs_through_compare(ext_module, tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-c", "import sys; from peft_notes.cli import main; sys.exit(main())", "compare", "--import", str(ext_module),
                        "--methods", "rank1_ext", "--train-size", "32", "--epochs", "1", "--max-length", "16", "--lr", "1e-2", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    row = json.loads((out / "results.json").read_text())[0]
    assert row["method"] == "rank1_ext" and row["trainable"] == 6 * 2 * (384 + 384) + 384 * 5 + 5   # u, v on q, v of 6 layers + the 5-class head

def test_import_of_a_missing_method_module_is_a_clear_error():
    r = subprocess.run([sys.executable, "-c", "import sys; from peft_notes.cli import main; sys.exit(main())", "compare", "--import", "/no/such.py"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--import /no/such.py: FileNotFoundError: no such method module" in r.stderr, r.stderr

def test_before_training_runs_once_with_the_data_before_the_optimizer_is_built():
    "A method that chooses what to train from data (FishMask, LT-SFT) does it in `before_training`; `fit` calls it before building its optimizer, so what it creates trains."
    from dataclasses import dataclass
    from torch.utils.data import DataLoader
    from peft_notes.core import TensorDeltaLayer, register_method, PeftConfig
    from peft_notes.train import fit
    from typing import ClassVar
    seen = []

    @dataclass
    class LateBias(PeftConfig):   # not registered: get_peft_model takes any config
        layer_cls: ClassVar[type] = TensorDeltaLayer
        def inject(self, ctx): pass                                     # nothing until the data is seen
        def before_training(self, ctx, batches):
            n = sum(1 for _ in batches); seen.append(n)                 # the data, whole
            ctx.wrap("bert.encoder.layer.1.output.dense", params=["bias"])   # chosen now
    LateBias.method = "late_bias"
    pm = get_peft_model(tiny_bert(), LateBias())
    assert pm.trainable_report().trainable == 0
    data = [{"input_ids": torch.randint(0, 99, (4, 6)), "labels": torch.randint(0, 2, (4,))} for _ in range(3)]
    fit(pm, DataLoader(data, batch_size=None), epochs=1, lr=1e-2, progress=False)
    layer = pm.base_model.bert.encoder.layer[1].output.dense
    assert seen == [3] and isinstance(layer, TensorDeltaLayer) and layer.base_delta["default"]["bias"].abs().max() > 0
