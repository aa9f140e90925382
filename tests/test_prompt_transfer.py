"""Chapter *Prompt transfer*: MPT against Hugging Face PEFT's `multitask_prompt_tuning` both ways (several tasks, rank
above one, a mixed batch of tasks), SPoT's adapter in PEFT as the prompt tuning it is, ATTEMPT refused there by name,
and bad input: each a clear error with the model as it was."""
import pytest, torch
peft = pytest.importorskip("peft")  # dev extra; `make test` installs it, so this never skips there
from peft_notes.core import PeftModel, get_peft_model
from peft_notes.interop import from_hf_peft, to_hf_peft
from peft_notes.models import tiny_gpt2, tiny_llama
from peft_notes.methods.additive.prompts import PromptTuningConfig
from peft_notes.methods.multitask.prompt_transfer import AttemptConfig, MPTConfig, SpotConfig, read_prompt
from _prompt_helpers import X, gap, train

T = torch.tensor([0, 2, 1])   # X's three rows, three different tasks

def train_tasks(model, steps=4, lr=5e-2):
    "A few Adam steps of the causal LM loss with a task per row, so the shared prompt and every task matrix move."
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr); model.train()
    for _ in range(steps):
        loss = model(**X, labels=X["input_ids"], task_ids=T).loss; opt.zero_grad(); loss.backward(); opt.step()
    return model.eval()

def task_gap(a, b)->float:
    with torch.no_grad(): return (a(**X, task_ids=T).logits - b(**X, task_ids=T).logits).abs().max().item()

@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_mpt_both_ways(make, tmp_path):
    ours = train_tasks(get_peft_model(make(), MPTConfig(num_virtual_tokens=5, num_tasks=3, num_ranks=2)))
    to_hf_peft(ours, tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(make(), tmp_path / "ours").eval()
    assert theirs.peft_config["default"].peft_type == "MULTITASK_PROMPT_TUNING"
    with torch.no_grad(): moved = (ours(**X, task_ids=T).logits - ours(**X, task_ids=torch.zeros(3, dtype=torch.long)).logits).abs().max().item()
    assert task_gap(theirs, ours) <= 1e-5 < moved   # the task matters, and PEFT applies each row's
    theirs = train_tasks(peft.get_peft_model(make(), peft.MultitaskPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, num_tasks=3, num_ranks=2)))
    theirs.save_pretrained(tmp_path / "theirs")
    back = from_hf_peft(make(), tmp_path / "theirs")
    cfg = back.peft_config["default"]
    assert (cfg.method, cfg.num_tasks, cfg.num_ranks) == ("mpt", 3, 2) and task_gap(back, theirs) <= 1e-5

def test_mpt_target_starts_from_a_peft_source_file(tmp_path):
    "PEFT's three starts from a source MPT file, ours from the same file: the same first prompt."
    src = train_tasks(peft.get_peft_model(tiny_llama(), peft.MultitaskPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, num_tasks=3)))
    src.save_pretrained(tmp_path / "src")
    f = str(tmp_path / "src" / "adapter_model.safetensors")
    for how, init in (("average", "AVERAGE_SOURCE_TASKS"), ("exact", "EXACT_SOURCE_TASK")):
        theirs = peft.get_peft_model(tiny_llama(), peft.MultitaskPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, num_tasks=1,
                                     prompt_tuning_init=init, prompt_tuning_init_state_dict_path=f, prompt_tuning_init_task=2)).eval()
        ours = get_peft_model(tiny_llama(), MPTConfig(num_virtual_tokens=5, init_from=str(tmp_path / "src"), init_how=how, init_task=2))
        with torch.no_grad():
            assert (theirs(**X, task_ids=torch.zeros(3, dtype=torch.long)).logits - ours(**X).logits).abs().max().item() <= 1e-5

def test_spot_loads_in_peft_as_prompt_tuning(tmp_path):
    src = train(get_peft_model(tiny_llama(), PromptTuningConfig(num_virtual_tokens=4)))
    src.save_adapter(tmp_path / "src")
    ours = train(get_peft_model(tiny_llama(), SpotConfig(num_virtual_tokens=4, source_prompt=str(tmp_path / "src"))))
    to_hf_peft(ours, tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path / "ours").eval()
    assert theirs.peft_config["default"].peft_type == "PROMPT_TUNING" and gap(theirs, ours) <= 1e-5
    peft_src = train(peft.get_peft_model(tiny_llama(), peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)))
    peft_src.save_pretrained(tmp_path / "peft_src")   # a PEFT prompt is a source too
    assert torch.equal(read_prompt(tmp_path / "peft_src"), peft_src.prompt_encoder["default"].embedding.weight.detach())

def test_attempt_export_refused_by_name(tmp_path):
    ours = get_peft_model(tiny_llama(), AttemptConfig(num_virtual_tokens=4))
    with pytest.raises((ValueError, NotImplementedError, TypeError), match="(?i)attempt"): to_hf_peft(ours, tmp_path)
    assert not (tmp_path / "adapter_model.safetensors").exists()

def _unchanged(pm, before):
    return set(pm.peft_config) == before and all(n in before for n in pm.adapter_inputs)

def test_bad_input(tmp_path):
    src = get_peft_model(tiny_llama(), PromptTuningConfig(num_virtual_tokens=4)); src.save_adapter(tmp_path / "src")
    lora_dir = tmp_path / "lora"
    from peft_notes.core import list_methods
    get_peft_model(tiny_llama(), list_methods()["lora"]()).save_adapter(lora_dir)
    pm = get_peft_model(tiny_llama(), PromptTuningConfig(num_virtual_tokens=4), "keep"); before = set(pm.peft_config)
    cases = [(SpotConfig(num_virtual_tokens=4, source_prompt=str(tmp_path / "missing")), FileNotFoundError, "save the source prompt"),
             (SpotConfig(num_virtual_tokens=4, source_prompt=str(lora_dir)), ValueError, "not a soft prompt"),
             (AttemptConfig(num_virtual_tokens=6, source_prompts=[str(tmp_path / "src")]), ValueError, "num_virtual_tokens must match"),
             (MPTConfig(num_virtual_tokens=4, init_from=str(tmp_path / "src")), ValueError, "is not an MPT adapter")]
    for cfg, err, msg in cases:
        with pytest.raises(err, match=msg): pm.add_adapter("new", cfg)
        assert _unchanged(pm, before)
    with pytest.raises(ValueError, match="num_tasks and num_ranks must be at least 1"): MPTConfig(num_virtual_tokens=4, num_ranks=0)
    with pytest.raises(ValueError, match="n_sources=3 but 1 source_prompts"): AttemptConfig(num_virtual_tokens=4, source_prompts=[str(tmp_path / "src")], n_sources=3)
    mp = get_peft_model(tiny_llama(), MPTConfig(num_virtual_tokens=4, num_tasks=2))
    with pytest.raises(ValueError, match="task_ids has 2 entries for a batch of 3"): mp(**X, task_ids=torch.tensor([0, 1]))
    with pytest.raises(NotImplementedError, match="several-task MPT"): mp.generate(X["input_ids"], max_new_tokens=2)
