"""Which stored results measure a computation that has changed since they ran.

Every stored result records in its provenance a fingerprint of each method it measured (`peft_notes.testing.fingerprint`:
one fixed tiny training step of the method, hashed) and, for results of the shared training loop, of the loop itself
("harness"). A result is STALE when a fingerprint computed on the code as it is now differs from the recorded one, or
when a file of its own measurement that no fingerprint covers (its bench script, a search or study module) changed
after its commit. A refactor that leaves every method computing what it computed leaves the results current.

    python tools/stale_results.py [--json] [--backfill]

--backfill: for results stored before fingerprints existed, compute them at the commit the result records (a git
worktree of that commit, running this checkout's `fingerprint` on that commit's package) and write them into the
result's provenance, marked `fingerprints_backfilled`. A result whose provenance names no commit stays 'unknown'.
Exits 0: a report, not a gate (the book marks the stale figures it quotes)."""
import ast, inspect, json, re, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEARCH, NOAH = "peft_notes/methods/hybrid/search.py", "peft_notes/methods/hybrid/noah.py"   # the searches' own code: no method fingerprint covers it
MEASURES = {  # result -> the methods it measured (rows: each row's method and the loop) and the files no fingerprint covers
    "bbc.json": {"code": ["peft_notes/data.py"]},
    "sst2.json": {"code": ["peft_notes/data.py"]},
    "sst2_family.json": {"code": ["peft_notes/data.py"]},
    "sst2_additive.json": {"code": ["peft_notes/data.py"]},
    "sst2_selective.json": {"code": ["peft_notes/data.py"]},
    "sst2_hybrid.json": {"code": ["peft_notes/data.py"]},
    "sst2_hybrid_search.json": {"code": ["peft_notes/data.py"]},
    "bench_cpu_core_v2.json": {"methods": ["lora", "full"], "code": ["bench/lora_bench.py"]},
    "bench_dora_cpu_core_v2.json": {"methods": ["dora", "lora"], "code": ["bench/dora_bench.py"]},
    "additive_bench_cpu.json": {"methods": ["compacter", "houlsby", "ia3", "lora", "parallel_adapter", "pfeiffer", "prefix_tuning", "prompt_tuning",
                                            "residual_adapter"], "code": ["bench/additive_bench.py", "bench/lora_bench.py"]},
    "family_memory_cpu.json": {"code": ["bench/family_memory.py"]},
    "family_memory_additive_cpu.json": {"code": ["bench/family_memory.py"]},
    "family_memory_selective_cpu.json": {"code": ["bench/family_memory.py"]},
    "which_matrices_sst2.json": {"methods": ["lora", "harness"], "code": ["bench/which_matrices.py", "peft_notes/data.py"],
                                 "code_since": "42be66e"},   # it ran from an uncommitted tree that 42be66e committed (results/README.md)
    "intrinsic_dim_sst2.json": {"methods": ["harness"], "code": [f"peft_notes/intrinsic.py::{n}" for n in ("fwht", "Fastfood", "RandomSubspace")] + ["bench/intrinsic_dim.py", "peft_notes/data.py"],
                                "moved": {"peft_notes/intrinsic.py": "peft_notes/reparam.py"}},   # the study's code had its home in reparam.py until core v3
    "autopeft_sst2.json": {"methods": ["autopeft", "harness"], "code": [f"{SEARCH}::{n}" for n in ("autopeft_params", "autopeft_trial", "autopeft_search", "pareto_front")]
                                                                  + ["bench/autopeft_search.py", "bench/search_setup.py", "peft_notes/data.py"],
                           "code_since": "0f3eb85"},   # 0f3eb85 moved the bench's setup into search_setup.py; before and after it, a tiny run writes the same numbers (its message)
    "s4_sst2.json": {"methods": ["s4", "harness"], "code": [f"{SEARCH}::{n}" for n in ("group_sizes", "s4_search")] + ["bench/s4_search.py", "bench/search_setup.py", "peft_notes/data.py"]},
    "noah_sst2.json": {"methods": ["noah", "harness"], "code": [f"{NOAH}::{n}" for n in ("FirstRows", "NOAHSupernetConfig", "set_subnet", "inherit_subnet", "noah_search")]
                                                          + [f"{SEARCH}::{n}" for n in ("LayerPrefixCache", "LayerPrefix")] + ["bench/noah_search.py", "bench/search_setup.py", "peft_notes/data.py"]},
    "qlora_bench_cpu.json": {"methods": ["lora", "qlora"], "code": ["bench/qlora_bench.py", "bench/lora_bench.py::_batch", "bench/lora_bench.py::tensor_bytes"]},
    "sst2_quantized.json": {"code": ["peft_notes/data.py"]},
    "sst2_quantized_family.json": {"code": ["peft_notes/data.py"] + [f"bench/quantized_family.py::{n}" for n in ("accuracy", "base_bytes", "_test_loader")]},   # each row records its config; its method's fingerprint and the loop's cover the rest
    "sst2_quantized_lr_nf2.json": {"code": ["peft_notes/data.py"]},   # harness rows: each records its config and its method's and the loop's fingerprints
    "sst2_bitdelta.json": {"methods": ["bitdelta", "harness"], "code": ["peft_notes/data.py", "bench/quantized_family.py::bitdelta"]},
    "sst2_dare.json": {"methods": ["lora", "harness"], "code": ["peft_notes/data.py", "peft_notes/methods/multitask/merging.py", "bench/merging.py::dare"]},
    "multitask_sources.json": {"methods": ["lora", "pfeiffer", "harness"], "code": ["peft_notes/data.py", "peft_notes/tasks.py", "bench/multitask.py::sources"]},
    "multitask_prompts.json": {"methods": ["prompt_tuning", "spot", "attempt", "mpt", "harness"], "code": ["peft_notes/data.py", "peft_notes/tasks.py", "bench/prompt_transfer.py", "bench/multitask.py::_data", "bench/multitask.py::score"]},
    "multitask_fusion.json": {"methods": ["pfeiffer", "adapter_fusion", "harness"], "code": ["peft_notes/data.py", "peft_notes/tasks.py", "bench/multitask.py::sources", "bench/multitask.py::fusion"]},
    "multitask_merging.json": {"methods": ["lora", "harness"], "code": ["peft_notes/data.py", "peft_notes/tasks.py", "peft_notes/methods/multitask/merging.py", "bench/multitask.py::sources", "bench/multitask.py::merging"]},
    "multitask_merging_five.json": {"methods": ["lora", "harness"], "code": ["peft_notes/data.py", "peft_notes/tasks.py", "peft_notes/methods/multitask/merging.py", "bench/multitask.py::sources", "bench/multitask.py::merging"]},
    "multitask_lorahub.json": {"methods": ["lora", "harness"], "code": ["peft_notes/data.py", "peft_notes/tasks.py", "peft_notes/methods/multitask/lorahub.py", "bench/multitask.py::sources",
                                                                  "bench/multitask.py::lorahub", "bench/multitask.py::_data", "bench/multitask.py::score"]},
    "multitask_adamix.json": {"methods": ["houlsby", "adamix"], "code": ["peft_notes/data.py", "peft_notes/tasks.py", "peft_notes/methods/multitask/mixtures.py::adamix_loss",
                                                                 "peft_notes/methods/multitask/mixtures.py::adamix_merge", "peft_notes/methods/multitask/mixtures.py::MixtureBottleneck",
                                                                 "bench/mixtures.py::_schedule", "bench/mixtures.py::_loop", "bench/mixtures.py::_routed", "bench/mixtures.py::adamix",
                                                                 "bench/multitask.py::_data", "bench/multitask.py::score"]},   # its own loop, not the harness's
    "multitask_adamix_lr4e-3.json": {"methods": ["houlsby", "adamix"], "code": ["peft_notes/data.py", "peft_notes/tasks.py", "peft_notes/methods/multitask/mixtures.py::adamix_loss",
                                                                 "peft_notes/methods/multitask/mixtures.py::adamix_merge", "peft_notes/methods/multitask/mixtures.py::MixtureBottleneck",
                                                                 "bench/mixtures.py::_schedule", "bench/mixtures.py::_loop", "bench/mixtures.py::_routed", "bench/mixtures.py::adamix",
                                                                 "bench/multitask.py::_data", "bench/multitask.py::score"]},   # its own loop, not the harness's
    "multitask_moelora.json": {"methods": ["lora", "moelora", "harness"], "code": ["peft_notes/data.py", "peft_notes/tasks.py", "bench/mixtures.py::_schedule", "bench/mixtures.py::_loop",
                                                                             "bench/mixtures.py::_mixed", "bench/mixtures.py::_slice_loss", "bench/mixtures.py::moelora",
                                                                             "bench/multitask.py::sources", "bench/multitask.py::_data", "bench/multitask.py::score"]},
    "quantized_family_cost_cpu.json": {"methods": ["lora", "qlora", "loftq", "qa_lora", "peqa", "qdylora", "ir_qlora", "lq_lora"],
                                       "code": [f"bench/quantized_family.py::{n}" for n in ("build", "child", "cost")]
                                               + ["bench/qlora_bench.py::build", "bench/qlora_bench.py::stored_bytes", "bench/lora_bench.py::_batch", "bench/lora_bench.py::tensor_bytes"]},
    "placement_char_llama.json": {"methods": ["pfeiffer", "parallel_adapter", "lora"],
                                  "code": ["peft_notes/foundations.py", "peft_notes/methods/hybrid/placement.py", "bench/placement_study.py"]},
    "placement_char_llama_sweep.json": {"methods": ["pfeiffer", "parallel_adapter", "lora"],
                                        "code": ["peft_notes/foundations.py", "peft_notes/methods/hybrid/placement.py", "bench/placement_study.py"]},
    "vision_digits.json": {"methods": ["adaptformer", "convpass", "fact", "full", "harness", "head", "lora", "ssf", "vpt", "vpt_deep"],
                           "code": ["bench/vision_table.py", "peft_notes/vision.py", "nbs/assets/digit_vit/digit_vit.json"],   # the stored ViT is part of what it measured: its record changes when it is re-made
                           "code_since": "b12d6ce"},   # the bench's own byte count was replaced by peft_notes.harness.stored_bytes, which computes the same
    "noah_vit.json": {"methods": ["noah", "harness"],
                      "code": ["bench/noah_vit.py", "bench/vision_table.py", "peft_notes/vision.py", "peft_notes/methods/vision/vpt.py", "nbs/assets/digit_vit/digit_vit.json"]
                              + [f"{NOAH}::{n}" for n in ("is_vit", "FirstRows", "NOAHSupernetConfig", "set_subnet", "inherit_subnet", "noah_search")]},   # NOAH's fingerprint trains on BERT: its ViT prompt is this code
    "mllm_digits.json": {"methods": ["llama_adapter"],
                         "code": ["bench/mllm_connectors.py", "peft_notes/multimodal_llm.py", "peft_notes/foundations.py", "peft_notes/vision.py",
                                  "nbs/assets/digit_vit/digit_vit.json", "nbs/assets/char_llama/char_llama.json"],
                         "code_since": "f76580e"},   # f76580e added lora_rank (the "+lora" kinds): with lora_rank 0, the connector-only runs compute as before
    "mllm_digits_lora.json": {"methods": ["llama_adapter"],   # the bench records llama_adapter's fingerprint only: LoRA's code is watched as a file
                              "code": ["bench/mllm_connectors.py", "peft_notes/multimodal_llm.py", "peft_notes/foundations.py", "peft_notes/vision.py",
                                       "peft_notes/methods/reparameterized/lora.py", "nbs/assets/digit_vit/digit_vit.json", "nbs/assets/char_llama/char_llama.json"],
                              "code_since": "ff43767"},   # ff43767 gave LoRA default targets on a diffusers UNet: on the LLaMA it computes as before
    "diffusion_few_shot.json": {"methods": ["custom_diffusion", "dreambooth", "lora", "svdiff", "textual_inversion"],
                                "code": ["bench/diffusion_few_shot.py", "peft_notes/diffusion.py", "peft_notes/methods/diffusion/few_shot.py::few_shot_loader",
                                         "nbs/assets/digit_unet/digit_unet.json", "nbs/assets/digit_scorer/digit_vit.json"]},
    "diffusion_control.json": {"methods": ["controlnet", "ip_adapter", "t2i_adapter"],
                               "code": ["bench/diffusion_control.py", "peft_notes/diffusion.py", "peft_notes/methods/diffusion/control.py",
                                        "nbs/assets/digit_unet/digit_unet.json", "nbs/assets/digit_scorer/digit_vit.json", "nbs/assets/digit_vit/digit_vit.json"]},
    "clip_fewshot.json": {"methods": ["coop", "cocoop", "clip_adapter", "tip_adapter", "harness"],
                          "code": ["bench/clip_fewshot.py", "peft_notes/multimodal.py", "peft_notes/vision.py", "nbs/assets/digit_clip/digit_clip.json", "nbs/assets/digit_vit/digit_vit.json"]},
}

def git(*args)->str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()

def file_commit(name:str)->str:
    "The commit that last changed a stored result: the best date for one that records no commit of its own."
    return git("log", "-1", "--format=%H", "--", f"results/{name}")

def commit_of(name:str, prov:dict)->tuple:
    "(commit, how we know it): the one the provenance records, or the file's last commit for the files older than provenance."
    return (prov["commit"], "provenance") if prov.get("commit") else (file_commit(name), "the file's last commit")

def units(name:str, data)->list[tuple]:
    "(label, provenance dict, methods) for each separately run part of a stored result (a row, a method's memory run, the whole file)."
    spec = MEASURES.get(name, {})
    if isinstance(data, list):   # rows of the harness (each row's method and the loop), or runs of a study (each the file's methods)
        return [(f"{r['method']}{'' if not r.get('config') else ' ' + json.dumps(r['config'], sort_keys=True)} seed {r.get('seed', 0)}",
                 r.setdefault("provenance", {}), [r["method"], "harness"]) if "method" in r else
                (f"run {i} {json.dumps(r.get('settings', {}), sort_keys=True)}", r.setdefault("provenance", {}), spec.get("methods", []))
                for i, r in enumerate(data)]
    if "provenance" not in data and data and all(isinstance(v, dict) for v in data.values()):   # {method[:overrides]: its own run}
        return [(k, v.setdefault("provenance", {}), [k.split(":")[0]]) for k, v in data.items()]
    return [("(whole file)", data.setdefault("provenance", {}), spec.get("methods", []))]

def definition(text:str, name:str)->str:
    "The top-level `def`/`class` called `name` in a module's text, up to the next top-level statement ('' if absent)."
    lines, out = text.splitlines(), []
    for l in lines:
        if out and l and not l[0].isspace() and not l.startswith((")", "#")): break
        if out or re.match(rf"(def|class) {re.escape(name)}\b", l): out.append(l)
    return "\n".join(c for c in (re.sub(r"\s+#.*$", "", l).rstrip() for l in out) if c)   # comments are not computation

class _Code(ast.NodeTransformer):
    "What a module computes: docstrings dropped, and a `provenance(...)` call (what a result records about itself) made a constant."
    def generic_visit(self, node):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        return super().generic_visit(node)
    def visit_Call(self, node):
        if getattr(node.func, "id", None) == "provenance": return ast.Constant("provenance")
        return self.generic_visit(node)

def code_of(text:str)->str:
    "A module's (or one definition's) code without comments, docstrings and provenance records; the text itself if it does not parse."
    try: return ast.dump(_Code().visit(ast.parse(text)))
    except SyntaxError: return text

def changed_code(commit:str, paths:list, moved:dict=None)->list[str]:
    "The entries of `paths` (files, or `file::name` for one top-level definition) whose code changed since `commit` (comments, docstrings and provenance records aside); `moved`: {file now: where it was}, for code that changed home since."
    now = lambda f: (ROOT / f).read_text() if (ROOT / f).exists() else ""
    out = []
    for entry in paths:
        f, _, name = entry.partition("::")
        old, new = git("show", f"{commit}:{f}") or git("show", f"{commit}:{(moved or {}).get(f, f)}"), now(f)
        if name: old, new = definition(old, name), definition(new, name)
        if code_of(old) != code_of(new): out.append(entry)
    return out

def now_fingerprints(methods)->dict:
    sys.path.insert(0, str(ROOT))
    from peft_notes.train import fingerprints
    import peft_notes.methods  # every family registers its methods
    return fingerprints(sorted(methods))

def report(backfilled:dict=None)->list[dict]:
    results = {p.name: json.loads(p.read_text()) for p in sorted((ROOT / "results").glob("*.json"))}
    all_units = {name: units(name, d) for name, d in results.items()}
    now = now_fingerprints({m for us in all_units.values() for _, _, ms in us for m in ms})
    out = []
    for name, us in all_units.items():
        for label, prov, methods in us:
            (commit, how), recorded = commit_of(name, prov), prov.get("fingerprints") or {}
            changed = [m for m in methods if m in recorded and recorded[m] != now.get(m)]
            missing = [m for m in methods if m not in recorded]
            code = MEASURES.get(name, {}).get("code", [])
            since = MEASURES.get(name, {}).get("code_since", commit)
            files = changed_code(since, code, MEASURES.get(name, {}).get("moved")) if commit and code else []
            state = ("unknown" if not commit or missing else "STALE" if changed or files else "current")
            out.append({"file": name, "part": label, "commit": (commit or "")[:7], "commit_from": how, "state": state, "methods": methods, "changed": changed,
                        "missing": missing, "files": files, "backfilled": prov.get("fingerprints_backfilled")})
    return out

def _fingerprint_source()->str:
    "The fingerprint function's source as this checkout has it, to run on an older checkout's package."
    sys.path.insert(0, str(ROOT))
    import peft_notes.testing as t
    parts = [f"FINGERPRINT_CONFIG = {t.FINGERPRINT_CONFIG!r}", f"FINGERPRINT_ARCH = {t.FINGERPRINT_ARCH!r}",
             inspect.getsource(t._harness_numbers), inspect.getsource(t.fingerprint)]
    return "\n".join(parts)

RUNNER = """
import json, sys, torch
torch.set_num_threads(1)
try: import peft_notes.methods
except ImportError: import peft_notes.reparam
{source}
out = {{}}
for m in {methods!r}:
    try: out[m] = fingerprint(m)
    except Exception as e: out[m] = None; print(f"{{m}}: {{type(e).__name__}}: {{e}}", file=sys.stderr)
print(json.dumps(out))
"""

def backfill():
    "Compute the missing fingerprints at each result's own commit and write them into the result files."
    paths = sorted((ROOT / "results").glob("*.json"))
    results = {p.name: json.loads(p.read_text()) for p in paths}
    todo = {}   # commit -> methods
    for name, d in results.items():
        for _, prov, methods in units(name, d):
            c, _ = commit_of(name, prov)
            if c and not prov.get("fingerprints"): todo.setdefault(c, set()).update(methods)
    source, computed = _fingerprint_source(), {}
    for commit, methods in sorted(todo.items()):
        with tempfile.TemporaryDirectory() as tmp:
            wt = Path(tmp) / "checkout"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(wt), commit], check=True, capture_output=True)
            try:
                r = subprocess.run([sys.executable, "-c", RUNNER.format(source=source, methods=sorted(methods))], cwd=wt, capture_output=True, text=True,
                                   env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(Path.home())})
            finally: subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(wt)], capture_output=True)
        if r.returncode: print(f"{commit[:7]}: failed\n{r.stderr[-2000:]}", file=sys.stderr); continue
        computed[commit] = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"{commit[:7]}: {computed[commit]}" + (f"  ({r.stderr.strip().splitlines()[-1][:120]})" if r.stderr.strip() else ""))
    stamp = time.strftime("%Y-%m-%d")
    for p in paths:
        d, touched, newline = results[p.name], False, p.read_text().endswith("\n")
        for _, prov, methods in units(p.name, d):
            c, how = commit_of(p.name, prov)
            if c in computed and not prov.get("fingerprints") and all(computed[c].get(m) for m in methods):
                prov["fingerprints"] = {m: computed[c][m] for m in methods}
                prov["fingerprints_backfilled"] = (f"{stamp}, tools/stale_results.py --backfill: the fingerprint function run on commit {c[:7]}'s package"
                                                   + ("" if how == "provenance" else " (the file records no commit: the one that added it)"))
                touched = True
        if touched: p.write_text(json.dumps(d, indent=1) + ("\n" if newline else ""))   # the files' own format: a smaller diff

if __name__ == "__main__":
    if "--backfill" in sys.argv: backfill()
    rows = report()
    if "--json" in sys.argv: print(json.dumps(rows, indent=1)); sys.exit(0)
    for r in rows:
        why = ([f"computation changed: {', '.join(r['changed'])}"] if r["changed"] else []) + ([f"files changed: {', '.join(r['files'])}"] if r["files"] else []) \
              + ([f"no fingerprint recorded for {', '.join(r['missing'])}"] if r["missing"] else []) + (["no commit recorded"] if not r["commit"] else [])
        print(f"{r['file']:<32} {r['part'][:44]:<44} {r['commit']:<8}{'*' if r['commit_from'] != 'provenance' else ' '} {r['state']}" + (f" - {'; '.join(why)}" if why else ""))
    print("(* the file records no commit: the commit that last changed it)")
