"The diffusion chapters' base: the script that made it retrains at a tiny size, the stored base draws reproducibly, and bad prompts are refused without changing anything."
import json, subprocess, sys
import pytest
import torch

pytest.importorskip("diffusers")

def test_digit_diffusion_retrains_at_a_tiny_size(tmp_path, root):
    "bench/digit_diffusion.py (the judge and the generator) for one epoch each at a tiny width: both load, the record says what made them, and it re-draws its own sample."
    r = subprocess.run([sys.executable, str(root / "bench" / "digit_diffusion.py"), "--epochs", "1", "--scorer-epochs", "0.2", "--channels", "16", "32",
                        "--guidance", "1", "2", "--per-digit", "4", "--chapter-per-digit", "2", "--out", str(tmp_path / "unet"),
                        "--scorer-out", str(tmp_path / "judge")], capture_output=True, text=True, cwd=root, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    from peft_notes.diffusion import caption, load_digit_diffusion, sample_digits, score_samples
    from peft_notes.vision import load_digit_vit
    model, info = load_digit_diffusion(tmp_path / "unet")
    judge, jinfo = load_digit_vit(tmp_path / "judge")
    assert info["provenance"]["command"][:3] == ["digit_diffusion.py", "--epochs", "1"] and info["steps"] == 32      # 2,000 digits 0-4 at batch 64
    assert tuple(model.unet.config.block_out_channels) == (16, 32) and judge.config.image_size == 16 and judge.config.num_labels == 10
    assert [row["guidance"] for row in info["guidance"]] == [1.0, 2.0] and all(0 <= row["accuracy"] <= 1 for row in info["guidance"])
    c = info["chapter_sample"]
    asked = torch.arange(5).repeat_interleave(2)
    imgs = sample_digits(model, [caption(int(d)) for d in asked], seed=c["seed"], guidance=c["guidance"])
    assert score_samples(judge, imgs, asked)["accuracy"] == c["accuracy"]
