"The toy multimodal LLM (nbs/78_multimodal_llm.ipynb): connectors, the zero-gated injection, bad input, save/load."
import pytest, torch
import transformers as T
from peft_notes.multimodal_llm import VisionLanguageLM, load_vlm, save_vlm

def tiny_lm():
    torch.manual_seed(0)
    return T.LlamaForCausalLM(T.LlamaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)).eval()

def _batch(B=3, N=5, d=16, L=7):
    g = torch.Generator().manual_seed(1)
    return {"image_features": torch.randn(B, N, d, generator=g), "input_ids": torch.randint(2, 50, (B, L), generator=g), "labels": torch.randint(2, 50, (B, L), generator=g)}

@pytest.mark.parametrize("kind", ["linear", "mlp", "resampler", "gated"])
def test_only_the_connector_trains_and_the_loss_falls(kind):
    lm = tiny_lm()
    m = VisionLanguageLM(lm, 16, kind, n_queries=4, gated_layers=2)
    trained = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith("connector.") or "adaption_" in n for n in trained)
    b = _batch()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    first = m(**b).loss.item()
    for _ in range(15): m(**b).loss.backward(); opt.step(); opt.zero_grad()
    assert m(**b).loss.item() < first
    assert all(p.grad is None for n, p in m.named_parameters() if n not in trained)

def test_gated_starts_as_the_language_model_and_prefix_masks_the_image():
    lm, b = tiny_lm(), _batch()
    plain = lm(input_ids=b["input_ids"], labels=b["labels"])
    m = VisionLanguageLM(lm, 16, "gated", n_queries=4, gated_layers=2)
    with torch.no_grad():
        out = m(**b)
        torch.testing.assert_close(out.logits, plain.logits, rtol=0, atol=0)
        torch.testing.assert_close(m(**{**b, "image_features": torch.randn(3, 5, 16)}).logits, plain.logits, rtol=0, atol=0)
    assert all(not l.conditioning for l in m.gated())                                   # cleared after the call
    p = VisionLanguageLM(tiny_lm(), 16, "linear")
    with torch.no_grad(): out = p(**b)
    assert out.logits.shape[1] == 5 + 7                                                # the image's 5 tokens, then the text
    shifted = out.logits[:, 4:-1].reshape(-1, 50)                                    # the last image position predicts the text's first token
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(shifted, b["labels"].reshape(-1)))   # no label on the image tokens

def test_bad_input_is_refused_by_name():
    with pytest.raises(ValueError, match="connector must be one of"): VisionLanguageLM(tiny_lm(), 16, "perceiver")
    with pytest.raises(ValueError, match="gated_layers must be in 1..3"): VisionLanguageLM(tiny_lm(), 16, "gated", gated_layers=4)
    with pytest.raises(ValueError, match="keeps the language model frozen"): VisionLanguageLM(tiny_lm(), 16, "gated", lora_rank=4)
    m, b = VisionLanguageLM(tiny_lm(), 16, "mlp"), _batch()
    with pytest.raises(ValueError, match="one row per text"): m(b["image_features"][:2], b["input_ids"])
    with pytest.raises(ValueError, match=r"\(batch, features, width\)"): m(b["image_features"][:, 0], b["input_ids"])
    g = VisionLanguageLM(tiny_lm(), 16, "gated", n_queries=4)
    layer = g.gated()[0]
    layer.conditioning["default"] = torch.zeros(2, 4, 32)
    with pytest.raises(ValueError, match="conditioning has 2 rows, the batch 3"): g.lm(input_ids=b["input_ids"])

def test_save_load_round_trip_and_a_failed_load_changes_nothing(tmp_path):
    m, b = VisionLanguageLM(tiny_lm(), 16, "gated", n_queries=4, gated_layers=2), _batch()
    with torch.no_grad():
        for l in m.gated(): l.adaption_gate["default"].fill_(0.5)                     # so that the image counts
        y = m(**b).logits
    save_vlm(m, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vlm.json", "vlm.safetensors"]
    with torch.no_grad(): torch.testing.assert_close(load_vlm(tmp_path, tiny_lm())(**b).logits, y, rtol=0, atol=0)
    other = T.LlamaForCausalLM(T.LlamaConfig(vocab_size=50, hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64))
    keys = set(other.state_dict())
    with pytest.raises(ValueError, match="do not fit"): load_vlm(tmp_path, other)
    assert set(other.state_dict()) == keys and all(p.requires_grad for p in other.parameters())
    with pytest.raises(FileNotFoundError, match="no saved VisionLanguageLM"): load_vlm(tmp_path / "missing", tiny_lm())

def test_a_prefix_connector_with_lora_on_the_lm(tmp_path):
    "lora_rank: the connector and LoRA's A and B on q_proj, v_proj train (nothing else of the LM); the pair saves and loads."
    m, b = VisionLanguageLM(tiny_lm(), 16, "mlp", lora_rank=2), _batch()
    trained = {n for n, p in m.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trained) and all(n.startswith("connector.") or "lora_" in n for n in trained)
    assert sum(m.state_dict()[n].numel() for n in trained if "lora_" in n) == 3 * 2 * (2 * 32 * 2)   # 3 layers, q and v, A and B of 2 × 32
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n: p.normal_()
        y = m(**b).logits
    save_vlm(m, tmp_path)
    with torch.no_grad(): torch.testing.assert_close(load_vlm(tmp_path, tiny_lm())(**b).logits, y, rtol=0, atol=0)
