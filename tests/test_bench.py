"""bench/lora_bench.py runs end to end (at a tiny size: its ratios are measured by running it, never asserted in a test)."""
import json, os, subprocess, sys
import pytest

def test_bench_quick_writes_every_ratio(tmp_path, root):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(root / "bench" / "lora_bench.py"), "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=900, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res["ratios"]) == {"ours / hf step", "ours / floor step", "ours / full memory", "merged / base inference", "unmerged / base inference",
                                  "ours / hf mixed-batch inference"}
    # ratios of two positive times; at --quick sizes the RSS increases and the per-layer cost difference are noise, so not checked here
    timed = [k for k in (*res["ratios"], *res["extra"]) if k.endswith(("step", "inference"))]
    assert len(timed) == 9 and all({**res["ratios"], **res["extra"]}[k][0] > 0 for k in timed)
    assert res["merge_err"] < 1e-4   # the merged model computes what the unmerged one does
    assert res["mixed_batch_err"] < 1e-4   # ours and PEFT serve the same mixed batch alike
    m = res["memory"]
    # deterministic accounting: full fine-tuning holds gradients and AdamW state for every weight, LoRA for its own only
    assert m["full"]["grad_mb"] > 80 and m["full"]["optim_mb"] > 160 and m["ours"]["grad_mb"] < 1 and m["floor"]["grad_mb"] == 0
    assert m["ours"]["tensors_mb"] < m["full"]["tensors_mb"] / 10
    assert m["ours_ckpt"]["saved_mb"] < m["ours"]["saved_mb"] / 2   # checkpointing keeps each block's input only
    for line in ("ours / hf step", "ours / floor step", "unmerged / base inference"): assert line in r.stdout

def test_dora_bench_quick(tmp_path, root):
    out = tmp_path / "dora.json"
    r = subprocess.run([sys.executable, str(root / "bench" / "dora_bench.py"), "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=900, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res["step_s"]) == {"ours", "hf", "lora", "hf_lora", "floor"} and "ours / hf DoRA step" in res["ratios"]
    assert all(v[0] > 0 for k, v in res["ratios"].items() if k.endswith("step"))
    assert "ours / hf DoRA step" in r.stdout

def test_family_memory_quick(tmp_path, root):
    out = tmp_path / "mem.json"
    r = subprocess.run([sys.executable, str(root / "bench" / "family_memory.py"), "--methods", "full,dora,adalora", "--batch", "2", "--seq", "8",
                        "--steps", "2", "--out", str(out)], capture_output=True, text=True, timeout=900, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(out.read_text())
    # deterministic: full fine-tuning holds gradients + AdamW state for every weight, the adapters for theirs
    assert m["full"]["grad_mb"] > 80 and m["dora"]["grad_mb"] < 1 and m["adalora"]["optim_mb"] < 2 * m["adalora"]["grad_mb"] + 1e-3

def test_family_memory_chooses_before_it_trains(tmp_path, root):
    "A method that chooses from data (FishMask) chooses on the bench's batch first: its selection is timed apart, and then its 0.5% trains (gradients of about 0.5% of MiniLM's encoder, not nothing)."
    out = tmp_path / "mem.json"
    r = subprocess.run([sys.executable, str(root / "bench" / "family_memory.py"), "--methods", "fish_mask:fisher_samples=2", "--batch", "2", "--seq", "8",
                        "--steps", "2", "--out", str(out)], capture_output=True, text=True, timeout=900, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(out.read_text())["fish_mask:fisher_samples=2"]
    assert m["select_s"] > 0 and 0.1 < m["grad_mb"] < 1      # ~54,000 values + the head, in fp32

def test_additive_bench_quick(tmp_path, root):
    "bench/additive_bench.py at a tiny size: every row timed against the base; the merged rows have no trainable adapter left."
    out = tmp_path / "add.json"
    r = subprocess.run([sys.executable, str(root / "bench" / "additive_bench.py"), "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=900, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert {"houlsby / base", "parallel_adapter / base", "compacter / base", "prefix_tuning (20) / base", "ia3 merged / base", "lora merged / base"} <= set(res["inference"])
    assert all(v[0] > 0 for v in (*res["inference"].values(), *res["adapter_drop"].values()))
    assert res["trainable"]["houlsby, adapter_drop=3"] == res["trainable"]["houlsby"] // 2   # adapters in the upper half only
    assert "AdapterDrop (lower 3 of 6 blocks) / Houlsby, training step" in r.stdout

def test_autopeft_search_tiny(tmp_path, root):
    "bench/autopeft_search.py at a tiny budget on the shipped task: every trial is recorded with a loadable config, and the front is non-dominated."
    out = tmp_path / "autopeft.json"
    r = subprocess.run([sys.executable, str(root / "bench" / "autopeft_search.py"), "--task", "bbc", "--search-train", "32", "--search-valid", "32",
                        "--trials", "3", "--startup", "3", "--max-length", "16", "--out", str(out)], capture_output=True, text=True, timeout=900, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    from peft_notes.core import PeftConfig
    done = res["trials"]
    assert 1 <= len(done) <= 3 and len(done) + res["pruned"] == 3
    assert all(PeftConfig.from_dict(t["config"]).method == "autopeft" and t["params"] > 0 and 0 <= t["accuracy"] <= 1 for t in done)
    front = res["front"]
    assert front and all(not any(t["accuracy"] >= f["score"] and t["params"] <= f["params"] and (t["accuracy"] > f["score"] or t["params"] < f["params"])
                                 for t in done) for f in front)
    assert res["provenance"]["command"]

def test_noah_search_tiny(tmp_path, root):
    "bench/noah_search.py at a tiny budget on the shipped task: the sub-networks scored keep the limit, each is scored once, and the one found is the best scored."
    out = tmp_path / "noah.json"
    r = subprocess.run([sys.executable, str(root / "bench" / "noah_search.py"), "--task", "bbc", "--train-size", "32", "--search-valid", "32", "--epochs", "1",
                        "--choices", "0,2,4", "--limit", "20000", "--population", "3", "--generations", "2", "--parents", "2", "--max-length", "16",
                        "--out", str(out)], capture_output=True, text=True, timeout=900, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    seen = [(h["adapter"], h["lora"], h["prompt"]) for h in res["history"]]
    assert len(seen) == 6 and len({str(s) for s in seen}) == 6 and all(h["params"] <= 20000 for h in res["history"])
    assert res["best_supernet_accuracy"] == max(h["score"] for h in res["history"]) and res["best_params"] <= 20000
    from peft_notes.methods.hybrid.noah import NOAHConfig
    NOAHConfig(adapter_sizes=res["best"]["adapter"], lora_ranks=res["best"]["lora"], prompt_lengths=res["best"]["prompt"])   # a valid config
    assert "--methods noah" in res["retrain_command"] and res["provenance"]["command"]

def test_s4_search_tiny(tmp_path, root):
    "bench/s4_search.py at a tiny budget on the shipped task: stage one scores every grouping pattern, stage two each group's candidates, and the design found is an S4Config."
    out = tmp_path / "s4.json"
    r = subprocess.run([sys.executable, str(root / "bench" / "s4_search.py"), "--task", "bbc", "--search-train", "32", "--search-valid", "32", "--epochs", "1",
                        "--k", "1", "--candidates", "1", "--max-length", "16", "--out", str(out)], capture_output=True, text=True, timeout=900, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    from peft_notes.methods.hybrid.search import GROUPINGS, S4Config
    assert [m["grouping"] for m in res["models"][:5]] == list(GROUPINGS) and len(res["history"]) == 5 + 4
    designs = [(m["grouping"], tuple(m["strategies"])) for m in res["models"]]
    assert len(designs) == len(set(designs)) == len({(h["grouping"], tuple(h["strategies"])) for h in res["history"]})   # each design trained once
    S4Config(grouping=res["grouping"], strategies=res["strategies"])
    assert res["grouping"] == max(res["pattern_means"], key=res["pattern_means"].get) and "--methods s4" in res["train_command"]

def test_char_llama_retrains_at_a_tiny_size(tmp_path, root):
    "The foundations chapter loads the stored character LLaMA; this runs the script that made it (bench/char_llama.py) for 3 steps, and the result loads."
    r = subprocess.run([sys.executable, str(root / "bench" / "char_llama.py"), "--steps", "3", "--out", str(tmp_path / "lm")],
                       capture_output=True, text=True, timeout=900, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    from peft_notes.foundations import load_char_llama
    stored = json.loads((root / "nbs" / "assets" / "char_llama" / "char_llama.json").read_text())
    lm, tok, info = load_char_llama(tmp_path / "lm")
    assert info["steps"] == 3 and len(info["losses"]) == 3 and info["provenance"]["command"][0] == "char_llama.py"
    assert tok.chars == stored["chars"]                                   # the same alphabet, from the same shipped corpus
    big, _, _ = load_char_llama(root / "nbs" / "assets" / "char_llama")
    assert {k: v.shape for k, v in lm.state_dict().items()} == {k: v.shape for k, v in big.state_dict().items()}   # the stored model's architecture

def test_digit_vit_retrains_at_a_tiny_size(tmp_path, root):
    "The vision chapters load the stored ViT; this runs the script that made it (bench/digit_vit.py) for a tenth of an epoch, and the result loads with the stored model's architecture."
    r = subprocess.run([sys.executable, str(root / "bench" / "digit_vit.py"), "--epochs", "0.1", "--out", str(tmp_path / "vit")],
                       capture_output=True, text=True, timeout=900, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    from peft_notes.vision import load_digit_vit
    vit, info = load_digit_vit(tmp_path / "vit")
    assert info["steps"] == 4 and info["digits"] == [0, 1, 2, 3, 4] and 0 <= info["test_accuracy"] <= 1
    assert info["provenance"]["command"][:3] == ["digit_vit.py", "--epochs", "0.1"]
    big, _ = load_digit_vit(root / "nbs" / "assets" / "digit_vit")
    assert {k: v.shape for k, v in vit.state_dict().items()} == {k: v.shape for k, v in big.state_dict().items()}

def test_vision_table_tiny(tmp_path, root):
    "bench/vision_table.py at a tiny size: a learning rate chosen per method on the validation split, then a row per (task, method, seed) with its accuracy, trained numbers, bytes and provenance."
    out = tmp_path / "vision.json"
    r = subprocess.run([sys.executable, str(root / "bench" / "vision_table.py"), "--methods", "head", "vpt", "--tasks", "5-9, 1 shot", "8x8, all",
                        "--seeds", "1", "--steps", "2", "--epochs", "0.02", "--out", str(out)], capture_output=True, text=True, timeout=900, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res["learning_rates"]) == {"head", "vpt"} and len(res["lr_selection"]) == 6 and all(x["on"] == "val" for x in res["lr_selection"])
    rows = {(x["method"], x["task"]): x for x in res["rows"]}
    assert set(rows) == {(m, t) for m in ("head", "vpt") for t in ("5-9, 1 shot", "8x8, all")}
    assert rows["head", "5-9, 1 shot"]["trained"] == 325 and rows["head", "8x8, all"]["trained"] == 650          # a 5-way and a 10-way head on width 64
    assert rows["vpt", "5-9, 1 shot"]["trained"] == 10 * 64 + 325 and all(0 <= x["accuracy"] <= 1 and x["bytes"] > 0 for x in rows.values())
    assert {"vpt", "head", "harness"} <= set(res["provenance"]["fingerprints"])

def test_digit_clip_retrains_at_a_tiny_size(tmp_path, root):
    "The vision-language chapters load the stored two towers; this runs the script that made them (bench/digit_clip.py) for a tenth of an epoch, and the result loads."
    r = subprocess.run([sys.executable, str(root / "bench" / "digit_clip.py"), "--epochs", "0.1", "--out", str(tmp_path / "clip")],
                       capture_output=True, text=True, timeout=900, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    from peft_notes.multimodal import load_digit_clip
    clip, tok, info = load_digit_clip(tmp_path / "clip")
    assert info["steps"] == 4 and set(info["zero_shot"]) == {"0-4", "5-9", "8x8 digits"} and info["provenance"]["command"][:3] == ["digit_clip.py", "--epochs", "0.1"]
    big, _, _ = load_digit_clip(root / "nbs" / "assets" / "digit_clip")
    assert {k: v.shape for k, v in clip.state_dict().items()} == {k: v.shape for k, v in big.state_dict().items()}

def test_qlora_bench_tiny(tmp_path, root):
    "bench/qlora_bench.py at a tiny size: three rows (ours over fp32 and over NF4, PEFT over bitsandbytes), memory counted from the tensors, steps interleaved."
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "qlora.json"
    r = subprocess.run([sys.executable, str(root / "bench" / "qlora_bench.py"), "--batch", "2", "--seq", "8", "--steps", "1", "--rounds", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=900, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    m = res["memory"]
    assert set(m) == {"lora", "qlora", "peft_qlora"} and set(res["step_s"]) == set(m)
    assert m["qlora"]["stored_mb"] < 0.7 * m["lora"]["stored_mb"] and abs(m["qlora"]["stored_mb"] - m["peft_qlora"]["stored_mb"]) < 1   # the same 4-bit base, counted
    assert m["qlora"]["saved_mb"] <= m["lora"]["saved_mb"] * 1.01   # no dequantized weight waits for the backward
    assert res["provenance"]["command"]

def test_quantized_family_bench_tiny(tmp_path, root):
    """bench/quantized_family.py at a tiny size: the accuracy part trains QA-LoRA through the harness and records its merged accuracy (the merged model
    checked INT4) and its base's bytes; the cost part counts PEQA's training memory from the tensors beside PEFT's QLoRA and interleaves their steps."""
    pytest.importorskip("bitsandbytes")
    if not os.environ.get("PEFT_NOTES_DATA"): pytest.skip("PEFT_NOTES_DATA is not set on this machine (SST-2)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    acc, cost = tmp_path / "acc.json", tmp_path / "cost.json"
    r = subprocess.run([sys.executable, str(root / "bench" / "quantized_family.py"), "accuracy", "--rows", "qa_lora", "--train-size", "32", "--epochs", "0.25", "--out", str(acc)],
                       capture_output=True, text=True, timeout=900, cwd=root, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    (row,) = json.loads(acc.read_text())
    assert row["row"] == "qa_lora" and 0 <= row["acc_merged"] <= 1 and abs(row["acc_merged"] - row["acc_after"]) < 0.01
    assert row["base_linear_bytes"] < 0.2 * 4 * 21_233_664 and row["provenance"]["fingerprints"]["qa_lora"]   # INT4 + fp16 constants: 0.16 of fp32
    r = subprocess.run([sys.executable, str(root / "bench" / "quantized_family.py"), "cost", "--rows", "lora,peqa", "--batch", "2", "--seq", "8", "--steps", "1", "--rounds", "1", "--out", str(cost)],
                       capture_output=True, text=True, timeout=900, cwd=root, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(cost.read_text())
    assert set(res["memory"]) == set(res["step_s"]) == {"lora", "peqa", "peft_qlora"}
    assert res["memory"]["peqa"]["stored_mb"] < 0.7 * res["memory"]["lora"]["stored_mb"]

def test_quantized_family_bitdelta_tiny(tmp_path, root):
    """bench/quantized_family.py's BitDelta part at a tiny size: a full fine-tune by the harness's loop, its delta as signs and scales, the scales
    distilled; the row records the three accuracies, the distillation's losses (only the alphas moved) and the adapter's bytes against the fine-tune's."""
    if not os.environ.get("PEFT_NOTES_DATA"): pytest.skip("PEFT_NOTES_DATA is not set on this machine (SST-2)")
    out = tmp_path / "bitdelta.json"
    r = subprocess.run([sys.executable, str(root / "bench" / "quantized_family.py"), "bitdelta", "--train-size", "32", "--epochs", "0.5", "--distill-steps", "2", "--out", str(out)],
                       capture_output=True, text=True, timeout=900, cwd=root, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    row = json.loads(out.read_text())
    assert all(0 <= row[k] <= 1 for k in ("acc_full", "acc_bitdelta", "acc_distilled")) and len(row["distill_losses"]) == 2
    assert row["alpha_before"] != row["alpha_after"] and len(row["alpha_before"]) == 37            # MiniLM's 36 encoder layers and its pooler, each one alpha
    assert row["bitdelta_bytes"] < 0.05 * row["full_bytes"] and row["provenance"]["fingerprints"]["bitdelta"]

def test_merging_dare_bench_tiny(tmp_path, root):
    "bench/merging.py's DARE study at a tiny size: a LoRA trained by the harness's loop, its change kept three ways, each scored; the change's statistics."
    if not os.environ.get("PEFT_NOTES_DATA"): pytest.skip("PEFT_NOTES_DATA is not set on this machine (SST-2)")
    out = tmp_path / "dare.json"
    r = subprocess.run([sys.executable, str(root / "bench" / "merging.py"), "dare", "--train-size", "32", "--epochs", "0.5", "--densities", "0.3", "--seeds", "0", "--out", str(out)],
                       capture_output=True, text=True, timeout=900, cwd=root, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert sorted(x["kind"] for x in res["rows"]) == ["dare", "dropped_not_rescaled", "largest_kept"] and all(0 <= x["accuracy"] <= 1 for x in res["rows"])
    assert 0 < res["delta_abs"]["median"] <= res["delta_abs"]["max"] and res["delta_abs"]["entries"] == 6 * 2 * 384 * 384 and res["provenance"]["fingerprints"]["lora"]

def test_multitask_bench_tiny(tmp_path, root):
    "bench/multitask.py at a tiny size: source adapters saved, merged by two rows of the table, fused on the target; each part writes its rows."
    if not os.environ.get("PEFT_NOTES_DATA"): pytest.skip("PEFT_NOTES_DATA is not set on this machine (SST-2)")
    env, run = {**os.environ, "HF_HUB_OFFLINE": "1"}, lambda *a: subprocess.run([sys.executable, str(root / "bench" / "multitask.py"), *a, "--save", str(tmp_path / "ad")],
                                                                                  capture_output=True, text=True, timeout=900, cwd=root, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    tasks = "dialogue_topic,shakespeare_speaker"
    r = run("sources", "--tasks", tasks, "--train-size", "24", "--epochs", "0.5", "--out", str(tmp_path / "s.json")); assert r.returncode == 0, r.stderr[-3000:]
    assert sorted((x["task"], x["method"]) for x in json.loads((tmp_path / "s.json").read_text())["rows"]) == sorted((t, m) for t in tasks.split(",") for m in ("lora", "pfeiffer"))
    r = run("merging", "--tasks", tasks, "--merges", "average,ties", "--out", str(tmp_path / "m.json")); assert r.returncode == 0, r.stderr[-3000:]
    acc = json.loads((tmp_path / "m.json").read_text())["accuracy"]
    assert set(acc) == {"own adapter", "average", "ties"} and all(set(v) == set(tasks.split(",")) for v in acc.values())
    r = run("fusion", "--tasks", tasks, "--sizes", "16", "--steps", "2", "--out", str(tmp_path / "f.json")); assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((tmp_path / "f.json").read_text())["rows"]
    assert [x["kind"] for x in rows] == ["head", "adapter", "fusion"] and len(rows[-1]["attention"]) == 6 and len(rows[-1]["fused"]) == 3
    r = run("lorahub", "--tasks", tasks, "--head", "dialogue_topic", "--seeds", "1", "--shots", "8", "--trials", "3", "--tune-steps", "2", "--out", str(tmp_path / "h.json"))
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "h.json").read_text())
    assert set(res["own"]) == set(tasks.split(",")) and set(res["zero_shot"]) == {"head's LoRA", "pool average"}
    assert [x["kind"] for x in res["rows"]] == ["LoraHub", "LoRA on the shots", "head's LoRA tuned on the shots"] and len(res["rows"][0]["weights"]) == 2
    assert all(-1.5 <= w <= 1.5 for w in res["rows"][0]["weights"]) and len(res["rows"][0]["history"]) == 3

def test_prompt_transfer_bench_tiny(tmp_path, root):
    "bench/prompt_transfer.py at a tiny size: source prompts saved, MPT's shared prompt distilled from them, every target row (prompt tuning, SPoT per source, ATTEMPT, MPT) and SPoT's similarities written."
    if not os.environ.get("PEFT_NOTES_DATA"): pytest.skip("PEFT_NOTES_DATA is not set on this machine (SST-2)")
    out, tasks = tmp_path / "p.json", ["dialogue_topic", "shakespeare_speaker"]
    r = subprocess.run([sys.executable, str(root / "bench" / "prompt_transfer.py"), "--save", str(tmp_path / "ad"), "--out", str(out), "--tasks", ",".join(tasks),
                        "--source-steps", "2", "--source-size", "16", "--mpt-steps", "2", "--target-size", "16", "--target-steps", "2", "--probe-steps", "1", "--test-size", "32"],
                       capture_output=True, text=True, timeout=900, cwd=root, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert [x["task"] for x in res["source_rows"]] == tasks and len(res["mpt_stage_one"]["losses"]) == 2
    assert [(x["kind"], x["source"]) for x in res["target_rows"]] == [("prompt_tuning", None), *(("spot", t) for t in tasks), ("attempt", None), ("mpt", None)]
    assert all(0 <= x["accuracy"] <= 1 for x in res["target_rows"]) and set(res["target_rows"][-2]["attention"]) == {*tasks, "target"}
    assert set(res["similarity"]) == set(tasks) and all(-1 <= v["average"] <= 1 for v in res["similarity"].values())

def test_mixtures_bench_tiny(tmp_path, root):
    "bench/mixtures.py at a tiny size: AdaMix against Houlsby (averaged, merged, single-module and random-route scores) and MOELoRA against per-task and shared LoRAs, each task scored."
    if not os.environ.get("PEFT_NOTES_DATA"): pytest.skip("PEFT_NOTES_DATA is not set on this machine (SST-2)")
    run = lambda *a: subprocess.run([sys.executable, str(root / "bench" / "mixtures.py"), *a], capture_output=True, text=True, timeout=900, cwd=root, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    r = run("adamix", "--task", "dialogue_topic", "--train-size", "16", "--epochs", "0.5", "--out", str(tmp_path / "a.json")); assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((tmp_path / "a.json").read_text())["rows"]
    assert [x["kind"] for x in rows] == ["houlsby", "adamix λ=1", "adamix λ=0"] and all(len(x["single_module_accuracy"]) == 4 for x in rows[1:])
    assert all(x["merged_accuracy"] == x["accuracy"] for x in rows[1:]) and rows[1]["stored_merged"] == rows[0]["stored"]
    tasks = ["dialogue_topic", "shakespeare_speaker"]
    r = run("moelora", "--tasks", ",".join(tasks), "--train-size", "16", "--epochs", "0.5", "--out", str(tmp_path / "m.json")); assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "m.json").read_text())
    assert [(x["kind"], x["task"]) for x in res["rows"]] == [(k, t) for k in ("one LoRA per task", "one shared LoRA", "MOELoRA") for t in tasks]
    assert all(0 <= x["accuracy"] <= 1 for x in res["rows"]) and all(len(g) == 2 and len(g[0]) == 4 for g in res["gates"].values())

def test_clip_fewshot_tiny(tmp_path, root):
    "bench/clip_fewshot.py at a tiny size: curve rows per (method, shots, seed), base-to-new rows with both accuracies and H, provenance with the VL methods' fingerprints."
    out = tmp_path / "clip.json"
    r = subprocess.run([sys.executable, str(root / "bench" / "clip_fewshot.py"), "--methods", "zero_shot", "coop", "cocoop", "tip_adapter", "--shots", "1",
                        "--seeds", "1", "--steps", "2", "--base-to-new-shots", "2", "--out", str(out)], capture_output=True, text=True, timeout=900, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    curve = {x["method"]: x for x in res["rows"] if x["kind"] == "curve"}
    b2n = {x["method"]: x for x in res["rows"] if x["kind"] == "base_to_new"}
    assert set(curve) == {"zero_shot", "coop", "cocoop", "tip_adapter"} and set(b2n) == {"zero_shot", "coop", "cocoop"}
    assert curve["zero_shot"]["base"] == b2n["zero_shot"]["base"] and curve["coop"]["trained"] == 4 * 384 and curve["cocoop"]["trained"] == 3716
    assert curve["tip_adapter"]["trained"] == 0 and all(0 <= x["new"] <= 1 and abs(x["H"] - 2 * x["base"] * x["new"] / (x["base"] + x["new"])) < 1e-9 for x in b2n.values())
    assert {"coop", "cocoop", "tip_adapter", "harness"} == set(res["provenance"]["fingerprints"])

def test_noah_vit_tiny(tmp_path, root):
    "bench/noah_vit.py at a tiny size: a supernet step or two, a short search within the limit, then the design found as vision-table rows with provenance."
    out = tmp_path / "noah.json"
    r = subprocess.run([sys.executable, str(root / "bench" / "noah_vit.py"), "--epochs", "0.05", "--population", "3", "--generations", "2", "--parents", "2",
                        "--tasks", "5-9, 1 shot", "--seeds", "1", "--steps", "2", "--table-epochs", "0.02", "--threads", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=900, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    from peft_notes.methods.hybrid.noah import noah_params
    assert len(res["history"]) == 6 and res["best_params"] <= 12_288 and res["best_params"] == noah_params(64, *(res["best"][k] for k in ("adapter", "lora", "prompt")), kv_width=64)
    assert len(res["lr_selection"]) == 3 and [x["method"] for x in res["rows"]] == ["noah"] and res["rows"][0]["trained"] == res["best_params"] + 325
    assert {"noah", "harness"} == set(res["provenance"]["fingerprints"])

def test_mllm_connectors_tiny(tmp_path, root):
    "bench/mllm_connectors.py at a tiny size: a learning rate per connector on validation, rows with accuracy, trained numbers and image tokens, the probe, provenance."
    out = tmp_path / "mllm.json"
    r = subprocess.run([sys.executable, str(root / "bench" / "mllm_connectors.py"), "--kinds", "linear", "gated", "--seeds", "1", "--steps", "2",
                        "--select-steps", "1", "--eval-limit", "20", "--out", str(out)], capture_output=True, text=True, timeout=900, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res["learning_rates"]) == {"linear", "gated"} and len(res["lr_selection"]) == 6 and all(x["on"] == "val" for x in res["lr_selection"])
    rows = {x["kind"]: x for x in res["rows"]}
    assert rows["linear"]["trained"] == 64 * 128 + 128 and rows["linear"]["image_tokens"] == 50 and rows["gated"]["image_tokens"] == 0
    assert all(0 <= x["accuracy"] <= 1 for x in rows.values()) and 0 < res["linear_probe_cls"] <= 1 and res["provenance"]["fingerprints"]["llama_adapter"]
