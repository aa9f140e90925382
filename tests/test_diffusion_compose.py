"""Several LoRAs on one UNet (chapter 79d): our weighted combination against diffusers' own `set_adapters`, the exact
merge, bad weights, and the bench that stores the chapter's two LoRAs, at a tiny size."""
import json, subprocess, sys
import pytest, torch
from test_diffusion import diffusion_inputs, tiny_digit_diffusion

def _two_loras():
    from peft_notes.core import get_peft_model
    from peft_notes.reparam import LoraConfig
    torch.manual_seed(0)
    pm = get_peft_model(tiny_digit_diffusion(), LoraConfig(r=4, alpha=8, init_lora_weights=False), adapter_name="a")
    torch.manual_seed(1); pm.add_adapter("b", LoraConfig(r=2, alpha=2, init_lora_weights=False))
    return pm.eval()

def test_weighted_loras_match_diffusers_set_adapters(tmp_path):
    "diffusers is the oracle: a UNet that loads both files (load_lora_adapter) and runs set_adapters([a, b], weights) gives what set_adapters gives here."
    pytest.importorskip("peft")
    from peft_notes.methods.diffusion.compose import set_adapters
    from peft_notes.methods.diffusion.few_shot import to_diffusers_lora
    pm = _two_loras()
    to_diffusers_lora(pm, tmp_path / "a", "a"); to_diffusers_lora(pm, tmp_path / "b", "b")
    x = diffusion_inputs(pm.base_model)
    unet = tiny_digit_diffusion().unet
    for n in ("a", "b"): unet.load_lora_adapter(str(tmp_path / n), prefix=None, adapter_name=n, weight_name="pytorch_lora_weights.safetensors")
    with torch.no_grad():
        states = pm.base_model.encode(x["input_ids"], x["attention_mask"])
        for w in ([1.0, 1.0], [1.0, 0.5], [0.3, -0.7]):
            unet.set_adapters(["a", "b"], weights=w); set_adapters(pm, ["a", "b"], w)
            theirs = unet(x["sample"], x["timestep"], encoder_hidden_states=states, encoder_attention_mask=x["attention_mask"]).sample
            torch.testing.assert_close(pm(**x).sample, theirs, atol=1e-5, rtol=0)

def test_cat_merge_is_the_weight_one_combination_and_bad_weights_are_refused():
    from peft_notes.methods.diffusion.compose import set_adapters
    from peft_notes.methods.multitask.merging import merge_adapters
    pm = _two_loras(); x = diffusion_inputs(pm.base_model)
    set_adapters(pm, ["a", "b"], [1.0, 0.5])
    with torch.no_grad(): both = pm(**x).sample
    merge_adapters(pm, ["a", "b"], [1.0, 0.5], how="cat", new_name="ab")
    pm.set_adapter("ab")
    with torch.no_grad(): torch.testing.assert_close(pm(**x).sample, both, atol=1e-5, rtol=0)
    assert pm.peft_config["ab"].r == 6
    with pytest.raises(ValueError, match="1 weights for 2 adapters"): set_adapters(pm, ["a", "b"], [1.0])
    set_adapters(pm, "a")
    assert pm.active_adapters == ["a"]

def test_the_lora_pair_bench_runs_at_a_tiny_size(root, tmp_path):
    "bench/digit_lora_pair.py end to end: two adapters and the record written; each loads onto the stored base without a warning about another base."
    import warnings
    from peft_notes.core import PeftModel
    from peft_notes.diffusion import load_digit_diffusion
    cmd = [sys.executable, str(root / "bench" / "digit_lora_pair.py"), "--steps", "2", "--samples", "5", "--ddim-steps", "2", "--threads", "1", "--out", str(tmp_path)]
    r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads((tmp_path / "digit_loras.json").read_text())
    assert sorted(rec["loras"]) == ["five", "six"] and all(v["steps"] == 2 for v in rec["loras"].values())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        import os; here = os.getcwd(); os.chdir(root / "nbs")                 # where the chapters run
        try: pm = PeftModel.from_pretrained(load_digit_diffusion("assets/digit_unet")[0], tmp_path / "five", adapter_name="five")
        finally: os.chdir(here)
    pm.load_adapter(tmp_path / "six", adapter_name="six")
    assert sorted(pm.peft_config) == ["five", "six"] and pm.peft_config["six"].r == 4
