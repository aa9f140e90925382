"""The multi-task family beyond merging (tests/test_merging.py): AdapterFusion over LoRA and bottleneck adapters on LLaMA
and BERT — a fusion trained to pick one adapter gives its output, stage two trains only the fusion, mixed batches,
saving and loading with and without the members, and the refusals."""
import pytest, torch
from peft_notes.core import PeftModel, get_peft_model, list_methods
from peft_notes.models import tiny_bert, tiny_llama
from peft_notes.methods.multitask.fusion import AdapterFusionConfig, fusion_params, tensor_digest
from test_compose import _check_each_row_alone

M = list_methods()
IDS = torch.randint(0, 99, (3, 8), generator=torch.Generator().manual_seed(0))

def _nudge(pm, names, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n in names:
            for p in pm.adapter_state_dict(n).values(): p.add_(torch.randn(p.shape, generator=g) * scale)
    return pm.eval()

def _fused(make, member_cfg, n=3):
    names = [f"m{i}" for i in range(n)]
    pm = get_peft_model(make(), member_cfg(), names[0])
    for x in names[1:]: pm.add_adapter(x, member_cfg())
    _nudge(pm, names)
    pm.add_adapter("fuse", AdapterFusionConfig(adapters=names)); pm.set_adapter("fuse")
    return pm.eval(), names

@pytest.mark.parametrize("make,member", [(tiny_llama, lambda: M["pfeiffer"](bottleneck=8)), (tiny_bert, lambda: M["pfeiffer"](bottleneck=8))],
                         ids=["llama", "bert"])   # the paper's members: bottleneck adapters (their biases give the keys a part that tells them apart)
@pytest.mark.parametrize("k", [0, 2])
def test_a_fusion_trained_to_pick_one_adapter_gives_its_output(make, member, k):
    pm, names = _fused(make, member)
    atts = list(pm.adapter_shared["fuse"].layers.values())
    for a in atts: a.keep = True
    opt = torch.optim.Adam([p for a in atts for p in (*a.query.parameters(), *a.key.parameters())], lr=0.05)
    pm.train()
    for _ in range(150):
        opt.zero_grad(); pm(IDS)
        sum(-a.last_alpha[..., k].clamp_min(1e-30).log().mean() for a in atts).backward(); opt.step()
    pm.eval()
    for a in atts: a.keep = False
    ids = torch.randint(0, 99, (3, 8), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        picked = pm(ids).logits; pm.set_adapter(names[k]); alone = pm(ids).logits
    torch.testing.assert_close(picked, alone, atol=1e-5, rtol=0)

def test_stage_two_trains_the_fusion_and_its_head_only():
    pm, names = _fused(tiny_bert, lambda: M["pfeiffer"](bottleneck=8))
    pm.delete_adapter("fuse"); pm.add_adapter("fuse", AdapterFusionConfig(adapters=names, modules_to_save=["classifier"])); pm.set_adapter("fuse")
    digests = {n: tensor_digest(pm.adapter_state_dict(n)) for n in names}
    assert pm.trainable_report().trainable == fusion_params(32, 2) + 32 * 2 + 2
    opt = torch.optim.Adam([p for p in pm.parameters() if p.requires_grad], lr=1e-2); pm.train()
    losses = []
    for _ in range(10):
        opt.zero_grad(); loss = pm(IDS, labels=torch.tensor([0, 1, 1])).loss; loss.backward(); opt.step(); losses.append(loss.item())
    assert losses[-1] < losses[0] and {n: tensor_digest(pm.adapter_state_dict(n)) for n in names} == digests

def test_mixed_batch_and_round_trip_with_and_without_members(tmp_path):
    pm, names = _fused(tiny_llama, lambda: M["lora"](r=4, target_modules=["q_proj", "v_proj"]))
    _nudge(pm, ["fuse"], seed=3, scale=0.05)   # the fusion off its start too
    _check_each_row_alone(pm, IDS, ["fuse", "__base__", names[1]])   # a row through the fusion, one through the base, one through a member
    pm.set_adapter("fuse")
    with torch.no_grad(): y = pm(IDS).logits
    for n in [*names, "fuse"]: pm.save_adapter(tmp_path / n, n)
    back = PeftModel.from_pretrained(tiny_llama(), tmp_path / names[0], names[0])
    for n in names[1:]: back.load_adapter(tmp_path / n, n)
    back.load_adapter(tmp_path / "fuse", "fuse"); back.set_adapter("fuse")
    with torch.no_grad(): assert torch.equal(back(IDS).logits, y)
    lonely = get_peft_model(tiny_llama(), M["lora"](r=4, target_modules=["q_proj", "v_proj"]), names[0])
    state = {k: v.clone() for k, v in lonely.state_dict().items()}
    with pytest.raises(ValueError, match=r"this model lacks \['m1', 'm2'\]: load them first"): lonely.load_adapter(tmp_path / "fuse", "fuse")
    assert sorted(lonely.peft_config) == [names[0]] and all(torch.equal(v, state[k]) for k, v in lonely.state_dict().items())

def test_fresh_members_reload_and_trained_ones_are_asked_for(tmp_path):
    pm = get_peft_model(tiny_bert(), AdapterFusionConfig(), "f")
    pm.save_adapter(tmp_path / "fresh")
    again = PeftModel.from_pretrained(tiny_bert(), tmp_path / "fresh", "f")
    assert sorted(again.peft_config) == ["f", "f_0", "f_1"]
    _nudge(pm, ["f_0"])   # a member trained after the fusion made it
    pm.save_adapter(tmp_path / "trained")
    with pytest.raises(ValueError, match=r"this model lacks \['f_0', 'f_1'\]"): PeftModel.from_pretrained(tiny_bert(), tmp_path / "trained")

@pytest.mark.parametrize("cfg,msg", [
    (lambda: AdapterFusionConfig(adapters=["m0"]), "at least two different adapters"),
    (lambda: AdapterFusionConfig(adapters=["m0", "m0"]), "at least two different adapters"),
    (lambda: AdapterFusionConfig(adapters=["m0", "low"]), r"holds \['m0'\] but not \['low'\]"),
    (lambda: AdapterFusionConfig(adapters=["m0", "ia3"]), "adapters on different layers, or of different methods"),
    (lambda: AdapterFusionConfig(adapters=["m0", "zz"], create_members=False), r"this model lacks \['zz'\]"),
    (lambda: AdapterFusionConfig(adapters=["m0", "fuse"]), "cannot fuse fusions"),
    (lambda: AdapterFusionConfig(adapters=["m0", "m1"], temperature=0), "temperature must be positive"),
    (lambda: AdapterFusionConfig(adapters=["m0", "m1"], member={"bottleneck": 4}), "config dict with a 'method'"),
])
def test_bad_fusions_are_refused_and_add_nothing(cfg, msg):
    pm, names = _fused(tiny_llama, lambda: M["lora"](r=2, target_modules=["q_proj", "v_proj"]))
    pm.add_adapter("low", M["lora"](r=2, target_modules=["q_proj", "v_proj"], layers_to_transform=[0]))
    pm.add_adapter("ia3", M["ia3"](target_modules=["q_proj", "v_proj"], feedforward_modules=[]))
    before = sorted(pm.peft_config)
    with pytest.raises(ValueError, match=msg): pm.add_adapter("f2", cfg())
    assert sorted(pm.peft_config) == before

def test_an_injection_that_fails_removes_the_members_it_created():
    pm = get_peft_model(tiny_llama(), M["lora"](r=2), "x")
    with pytest.raises(ValueError, match="holds"):
        pm.add_adapter("f", AdapterFusionConfig(adapters=["x", "new"], member={"method": "lora", "r": 2, "target_modules": ["k_proj"]}))
    assert sorted(pm.peft_config) == ["x"] and not any("new" in n for n, _ in pm.named_parameters())

def test_mt_a_trains_the_base_with_each_tasks_adapter_on_llama():
    "MT-A on LLaMA (a causal LM: labels are the inputs): the base and each task's adapter move, each only by its own task's steps; after it the base is frozen and the active adapter restored; a bad task map changes nothing."
    from peft_notes.methods.multitask.fusion import train_mt_adapters
    torch.manual_seed(0)
    pm = get_peft_model(tiny_llama(), M["pfeiffer"](bottleneck=8), "a"); pm.add_adapter("b", M["pfeiffer"](bottleneck=8)); pm.add_adapter("idle", M["pfeiffer"](bottleneck=8))
    before = {n: {k: v.clone() for k, v in pm.adapter_state_dict(n).items()} for n in ("a", "b", "idle")}
    emb = pm.base_model.model.embed_tokens.weight.clone()
    batches = lambda seed: [{"input_ids": x, "labels": x} for x in torch.randint(3, 99, (4, 2, 8), generator=torch.Generator().manual_seed(seed))]
    with pytest.raises(ValueError, match="no adapter 'zz'"): train_mt_adapters(pm, {"a": batches(0), "zz": batches(1)}, steps=3)
    assert torch.equal(pm.base_model.model.embed_tokens.weight, emb) and pm.active_adapters == ["a"]
    hist = train_mt_adapters(pm, {"a": batches(0), "b": batches(1)}, steps=40, lr=1e-3, adapter_lr=1e-2)
    assert {t for t, _ in hist} == {"a", "b"} and not torch.equal(pm.base_model.model.embed_tokens.weight, emb)
    for t in ("a", "b"):
        losses = [l for s, l in hist if s == t]; assert sum(losses[-5:]) < sum(losses[:5])
        assert any(not torch.equal(v, before[t][k]) for k, v in pm.adapter_state_dict(t).items())
    assert all(torch.equal(v, before["idle"][k]) for k, v in pm.adapter_state_dict("idle").items())
    assert pm.active_adapters == ["a"] and not pm.base_model.model.embed_tokens.weight.requires_grad
