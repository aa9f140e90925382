"""`merge_adapters` and `merge_task_vectors`: each `how` against a plain reference (loops over entries), PEFT's semantics
against Hugging Face PEFT's `add_weighted_adapter`, the exact sum against the core's `Average` composition, and bad input."""
import itertools, math, pytest, torch
peft = pytest.importorskip("peft")  # dev extra; `make test` installs it
from peft_notes.core import PeftModel, get_peft_model, list_methods
from peft_notes.core.layer import Average
from peft_notes.interop import to_hf_peft
from peft_notes.models import tiny_bert, tiny_gpt2, tiny_llama
from test_compose import _nudge   # each adapter moved off its start
from peft_notes.methods.multitask.merging import MERGES, PEFT_MERGES, adapter_layers, combine, merge_adapters, merge_task_vectors

M = list_methods()
IDS = torch.randint(0, 99, (2, 7), generator=torch.Generator().manual_seed(0))


def _loras(make=tiny_llama, targets=(["q_proj", "v_proj", "down_proj"], ["q_proj", "v_proj"], ["q_proj", "k_proj"]), ranks=(4, 4, 2), alphas=(8, 4, 4)):
    pm = get_peft_model(make(), M["lora"](r=ranks[0], alpha=alphas[0], target_modules=targets[0]), "a")
    for n, t, r, al in zip("bc", targets[1:], ranks[1:], alphas[1:]): pm.add_adapter(n, M["lora"](r=r, alpha=al, target_modules=t))
    return _nudge(pm, ["a", "b", "c"])

def _logits(pm, name):
    pm.set_adapter(name)
    with torch.no_grad(): return pm(IDS).logits

# ---------------- PEFT's semantics equal PEFT ----------------
@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2-conv1d"])
def test_peft_semantics_equal_peft_for_every_combination_type(make, tmp_path):
    targets = (["q_proj", "v_proj", "down_proj"], ["q_proj", "v_proj"], ["q_proj", "k_proj"]) if make is tiny_llama else (["c_attn", "c_proj"], ["c_attn"], ["c_fc"])
    pm = _loras(make, targets, ranks=(4, 4, 2))
    for n in "abc": to_hf_peft(pm, tmp_path / n, n)
    theirs = peft.PeftModel.from_pretrained(make(), tmp_path / "a", adapter_name="a")
    for n in "bc": theirs.load_adapter(tmp_path / n, adapter_name=n)
    theirs.eval()
    cases = [(how, ["a", "b"], [0.7, -0.4], {"density": 0.5} if how not in ("linear", "cat", "svd") else {}) for how in PEFT_MERGES]
    cases += [("cat", ["a", "b", "c"], [0.7, 0.4, 1.0], {}), ("svd", ["a", "b", "c"], [0.7, 0.4, 1.0], {"svd_rank": 3}),
              ("ties", ["a", "b"], [1.0, 0.5], {"density": 0.3, "majority_sign_method": "frequency"}), ("svd", ["a", "b"], [1.0, 1.0], {"svd_clamp": 0.9}),
              ("ties", ["c"], [1.0], {"density": 0.5})]   # one adapter: PEFT merges it linearly whatever the type
    for i, (how, names, w, kw) in enumerate(cases):
        torch.manual_seed(5); theirs.add_weighted_adapter(names, w, f"t{i}", combination_type=how, **kw)
        ours_kw = {("rank" if k == "svd_rank" else k): v for k, v in kw.items()}
        torch.manual_seed(5); merge_adapters(pm, names, w, how, new_name=f"o{i}", semantics="peft", **ours_kw)
        theirs.set_adapter(f"t{i}")
        with torch.no_grad(): want = theirs(IDS).logits
        torch.testing.assert_close(_logits(pm, f"o{i}"), want, atol=1e-6, rtol=0, msg=lambda m: f"{how} {names}: {m}")

# ---------------- our semantics: the weight changes ----------------
@pytest.mark.parametrize("method,kw", [("lora", {"r": 4, "alpha": 8}), ("lora", {"r": 4, "alpha": 8, "use_rslora": True}), ("dora", {"r": 4, "alpha": 8}),
                                       ("loha", {"r": 4}), ("lokr", {"r": 4}), ("vera", {"r": 8})], ids=["lora", "rslora", "dora", "loha", "lokr", "vera"])
def test_linear_merge_equals_the_adapters_averaged_and_one_adapter_comes_back(method, kw):
    "The merged `linear` output = the adapters run together under Average (weights as given); one adapter at weight 1 = itself."
    pm = get_peft_model(tiny_llama(), M[method](**kw), "a"); pm.add_adapter("b", M[method](**kw)); _nudge(pm, ["a", "b"])
    y_a = _logits(pm, "a")
    merge_adapters(pm, ["a"], [1.0], "linear", new_name="a1")
    torch.testing.assert_close(_logits(pm, "a1"), y_a, atol=1e-5, rtol=0)
    pm.set_adapter(["a", "b"], composition=Average({"a": 0.6, "b": -0.3}, normalize=False))
    with torch.no_grad(): composed = pm(IDS).logits
    merge_adapters(pm, ["a", "b"], [0.6, -0.3], "linear", new_name="ab")
    torch.testing.assert_close(_logits(pm, "ab"), composed, atol=1e-5, rtol=0)

def _ref_trim(t, density):
    "Keep the int(density·n) largest magnitudes: a plain loop over a sorted list."
    flat = t.flatten().tolist(); k = int(density * len(flat))
    order = sorted(range(len(flat)), key=lambda i: -abs(flat[i]))[:k]
    return torch.tensor([flat[i] if i in set(order) else 0.0 for i in range(len(flat))]).view(t.shape)

def _ref_merge(ts, ws, how, density, masks=None):
    "TIES / DARE / magnitude pruning of one tensor, entry by entry in Python."
    if how.startswith("dare"): thin = [t * m / density for t, m in zip(ts, masks)]
    elif how in ("ties", "magnitude_prune"): thin = [_ref_trim(t, density) for t in ts]
    else: thin = list(ts)
    vals = [[w * x for x in t.flatten().tolist()] for w, t in zip(ws, thin)]
    out = []
    for e in range(len(vals[0])):
        col = [v[e] for v in vals]
        if how in ("ties", "dare_ties"):
            s = 1.0 if sum(col) >= 0 else -1.0
            agree = [x for x in col if x != 0 and math.copysign(1, x) == s]
            out.append(sum(agree) / max(len(agree), 1))
        else: out.append(sum(col))
    return torch.tensor(out).view(ts[0].shape)

@pytest.mark.parametrize("how", ["ties", "dare_linear", "dare_ties", "magnitude_prune"])
def test_sparse_merges_equal_plain_references(how):
    pm = _loras()
    density, weights = 0.4, [0.8, -0.5, 1.1]
    merge_adapters(pm, ["a", "b", "c"], weights, how, new_name="m", density=density, seed=3)
    g = torch.Generator().manual_seed(3)   # the same draws, in the same order: layers in model order, adapters in order
    held = {n: adapter_layers(pm, n) for n in "abc"}
    for path, layer in adapter_layers(pm, "m").items():
        here = [(held[n][path].get_delta_weight(n).detach(), w) for n, w in zip("abc", weights) if path in held[n]]
        masks = [torch.bernoulli(torch.full_like(d, density), generator=g) for d, _ in here] if how.startswith("dare") else None
        want = _ref_merge([d for d, _ in here], [w for _, w in here], how, density, masks)
        torch.testing.assert_close(layer.get_delta_weight("m").detach(), want, atol=1e-5, rtol=0)

def test_svd_truncates_the_sum_and_rank_none_keeps_a_sparse_merge_exact():
    pm = _loras()
    cfg = merge_adapters(pm, ["a", "b"], [1.0, 1.0], "svd", new_name="s2", rank=2)
    assert cfg.r == 2
    path = "model.layers.0.self_attn.q_proj"
    D = sum(adapter_layers(pm, n)[path].get_delta_weight(n) for n in "ab").detach()
    U, S, Vh = torch.linalg.svd(D)
    torch.testing.assert_close(adapter_layers(pm, "s2")[path].get_delta_weight("s2").detach(), U[:, :2] @ torch.diag(S[:2]) @ Vh[:2], atol=1e-5, rtol=0)
    assert merge_adapters(pm, ["a", "b"], [1.0, 1.0], "ties", new_name="t", density=0.5).r == 32   # full rank of a 32 x 32 change

def test_dare_is_seeded_and_a_merged_adapter_saves_loads_and_exports(tmp_path):
    pm = _loras()
    merge_adapters(pm, ["a", "b"], [1, 1], "dare_ties", new_name="d1", density=0.5, seed=7)
    merge_adapters(pm, ["a", "b"], [1, 1], "dare_ties", new_name="d2", density=0.5, seed=7)
    merge_adapters(pm, ["a", "b"], [1, 1], "dare_ties", new_name="d3", density=0.5, seed=8)
    y1 = _logits(pm, "d1")
    assert torch.equal(y1, _logits(pm, "d2")) and not torch.allclose(y1, _logits(pm, "d3"))
    pm.save_adapter(tmp_path / "ours", "d1"); to_hf_peft(pm, tmp_path / "hf", "d1")
    back = PeftModel.from_pretrained(tiny_llama(), tmp_path / "ours", "d1")
    theirs = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path / "hf").eval()
    with torch.no_grad(): assert torch.equal(back(IDS).logits, y1) and torch.allclose(theirs(IDS).logits, y1, atol=1e-6)

def test_heads_from_copies_a_trained_head():
    pm = get_peft_model(tiny_bert(), M["lora"](r=2, modules_to_save=["classifier"]), "a"); _nudge(pm, ["a"])
    y = _logits(pm, "a")
    merge_adapters(pm, ["a"], [1.0], new_name="m", heads_from="a")
    torch.testing.assert_close(_logits(pm, "m"), y, atol=1e-5, rtol=0)
    merge_adapters(pm, ["a"], [1.0], new_name="no_head")
    assert not torch.allclose(_logits(pm, "no_head"), y, atol=1e-3)   # the base's own (untrained) head

def test_task_vectors_merge_entry_by_entry():
    base = tiny_bert(); tuned = []
    for s in (1, 2, 3):
        m = tiny_bert()
        with torch.no_grad():
            for p in m.parameters(): p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(s)) * 0.02)
        tuned.append(m)
    sd0 = base.state_dict(); k = "bert.encoder.layer.0.attention.self.query.weight"
    taus = [t.state_dict()[k] - sd0[k] for t in tuned]
    for how in ("task_arithmetic", "ties", "magnitude_prune"):
        out = merge_task_vectors(base, tuned, [0.5, 0.3, 0.2], how, density=0.3)
        torch.testing.assert_close(out[k], sd0[k] + _ref_merge(taus, [0.5, 0.3, 0.2], "linear" if how == "task_arithmetic" else how, 0.3), atol=1e-6, rtol=0)
    counter = lambda m, v: {**m.state_dict(), "steps": torch.tensor([v])}   # an integer buffer: the base's is kept, not merged
    assert merge_task_vectors(counter(base, 3), [counter(t, 5 + i) for i, t in enumerate(tuned)], [1, 1, 1])["steps"].tolist() == [3]
    with pytest.raises(ValueError, match="2 weights for 3 fine-tuned models"): merge_task_vectors(base, tuned, [1, 1])
    with pytest.raises(ValueError, match="unknown merge 'svd' for task vectors"): merge_task_vectors(base, tuned, [1, 1, 1], "svd")
    with pytest.raises(ValueError, match="model 0 has other tensors than the base"): merge_task_vectors(base, [tiny_llama(), *tuned[1:]], [1, 1, 1])

@pytest.mark.parametrize("call,msg", [
    (lambda pm: merge_adapters(pm, ["a", "zz"], [1, 1]), "no adapter 'zz'"),
    (lambda pm: merge_adapters(pm, ["a", "b"], [1]), "1 weights for 2 adapters"),
    (lambda pm: merge_adapters(pm, ["a", "b"], [1, float("nan")]), "finite numbers"),
    (lambda pm: merge_adapters(pm, ["a", "b"], [1, 1], "ties", density=0), "needs a density in (0, 1]"),
    (lambda pm: merge_adapters(pm, ["a", "b"], [1, 1], "dare_linear", density=1.01), "needs a density in (0, 1]"),
    (lambda pm: merge_adapters(pm, ["a", "b"], [1, 1], "mean"), "unknown merge 'mean'"),
    (lambda pm: merge_adapters(pm, ["a", "b"], [1, 1], "linear", semantics="mergekit"), "semantics must be"),
    (lambda pm: merge_adapters(pm, ["a", "b"], [1, 1], new_name="a"), "is taken"),
    (lambda pm: merge_adapters(pm, ["a", "a"], [1, 1]), "adapter names repeat"),
    (lambda pm: merge_adapters(pm, ["a", "h"], [1, 1]), "different methods ['loha', 'lora']"),
    (lambda pm: merge_adapters(pm, ["a", "c"], [1, 1], "linear", semantics="peft"), "the ranks must be equal; got [2, 4]"),
    (lambda pm: merge_adapters(pm, ["h"], [1], "cat", semantics="peft"), "semantics='peft' merges plain LoRA"),
    (lambda pm: merge_adapters(pm, ["a"], [1], rank=0), "rank must be a positive int"),
    (lambda pm: merge_adapters(pm, ["a"], [1], "magnitude_prune", density=0.5, seed=None), "seed must be an int"),
    (lambda pm: merge_adapters(pm, ["a"], [1], heads_from="zz"), "heads_from: no adapter 'zz'"),
])
def test_bad_merges_are_refused_and_write_nothing(call, msg):
    pm = _loras(); pm.add_adapter("h", M["loha"](r=2))
    before = (sorted(pm.peft_config), {k: v.clone() for k, v in pm.state_dict().items()})
    with pytest.raises((ValueError, TypeError), match=msg.replace("(", "\\(").replace(")", "\\)").replace("[", "\\[").replace("]", "\\]")): call(pm)
    assert sorted(pm.peft_config) == before[0] and all(torch.equal(v, before[1][k]) for k, v in pm.state_dict().items())

def test_merging_a_prompt_or_a_quantized_adapter_is_refused():
    pm = get_peft_model(tiny_llama(), M["prompt_tuning"](num_virtual_tokens=3), "p")
    with pytest.raises(ValueError, match="does not change weight matrices that merge"): merge_adapters(pm, ["p"], [1])
    q = get_peft_model(tiny_llama(), M["qlora"](r=2), "q")
    with pytest.raises(ValueError, match="cannot be read as a float weight change|does not change weight matrices"): merge_adapters(q, ["q"], [1])

def test_linear_and_ties_on_gpt2_conv1d_follow_the_weight_layout():
    "GPT-2 stores its projections transposed (Conv1D): the merged change is still the sum of the changes, in the right layout."
    pm = _loras(tiny_gpt2, (["c_attn", "c_proj"], ["c_attn"], ["c_fc"]))
    pm.set_adapter(["a", "b", "c"], composition=Average({"a": 0.5, "b": 0.25, "c": -1.0}, normalize=False))
    with torch.no_grad(): composed = pm(IDS).logits
    merge_adapters(pm, ["a", "b", "c"], [0.5, 0.25, -1.0], "linear", new_name="m")
    torch.testing.assert_close(_logits(pm, "m"), composed, atol=1e-5, rtol=0)
    merge_adapters(pm, ["a", "b"], [1.0, 1.0], "ties", new_name="t", density=0.5)
    path = "transformer.h.0.attn.c_attn"
    deltas = [adapter_layers(pm, n)[path].get_delta_weight(n).detach().T for n in "ab"]   # (d_out, d_in)
    torch.testing.assert_close(adapter_layers(pm, "t")[path].get_delta_weight("t").detach().T, _ref_merge(deltas, [1.0, 1.0], "ties", 0.5), atol=1e-5, rtol=0)
