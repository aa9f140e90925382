"""The shared matrix (`check_method`, mixed batches included) for every registered method on BERT, LLaMA and GPT-2."""
import pytest
from peft_notes.core import list_methods
from peft_notes.models import tiny_bert, tiny_gpt2, tiny_llama
from peft_notes.testing import check_method
import transformers as T

def tiny_qwen2():
    "A LLaMA-shaped decoder whose q, k, v projections have biases (for BitFit: LLaMA has none)."
    return T.Qwen2ForCausalLM(T.Qwen2Config(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                            intermediate_size=37, max_position_embeddings=64)).eval()

METHODS = ["lora", "dora", "adalora", "dylora", "sora", "vera", "loha", "lokr", "ia3", "bitfit", "prompt_tuning", "prefix_tuning",
           "houlsby", "pfeiffer", "residual_adapter", "parallel_adapter", "compacter"]
LR = {"ia3": 5e-2, "bitfit": 5e-2, "prompt_tuning": 5e-2, "prefix_tuning": 5e-2}
INPUTS_KIND = {"prompt_tuning", "prefix_tuning"}   # change the inputs: not the base at init, not mergeable, no mixed batch (rows of different lengths)

def test_every_registered_method_is_in_the_matrix():
    "Every method the package registers (tests may register methods of their own in the same process: not counted)."
    assert {n for n, c in list_methods().items() if c.__module__.startswith("peft_notes.")} == set(METHODS)

@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
@pytest.mark.parametrize("method", METHODS)
def test_check_method(method, arch):
    make = {"bert": tiny_bert, "llama": tiny_qwen2 if method == "bitfit" else tiny_llama, "gpt2": tiny_gpt2}[arch]
    r = check_method(list_methods()[method], make, lr=LR.get(method, 1e-2), identity_at_init=method not in INPUTS_KIND)
    assert r["loss_after"] < r["loss_before"]
    if method in INPUTS_KIND:
        assert r["merge"].startswith("refused") and r["mixed_batch_max_diff"].startswith("refused") and r["init_max_diff"] > 0
    else: assert isinstance(r["mixed_batch_max_diff"], float) and r["mixed_batch_max_diff"] <= 1e-5
