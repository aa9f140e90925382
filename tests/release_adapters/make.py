"""Write one trained adapter per registered method, with the outputs it gives: the files `tests/test_release_adapters.py` loads.

The adapters of a release are what users keep; the core may be redesigned, but every file it saved must load and give
the same outputs, bit for bit. Run this at a release (it writes `tests/release_adapters/<release>/`) and keep the folder:

    .venv/bin/python tests/release_adapters/make.py            # the version in settings.ini

Each method trains three Adam steps on one fixed batch of a tiny model (BERT for sequence classification; LLaMA for
LLaMA-Adapter; T5 for cross-attention tuning), so that its tensors are not their initial values; the folder keeps the
tiny bases (`bases/<arch>.safetensors`: a later transformers may initialise differently), each adapter as
`save_adapter` wrote it, and `expected.safetensors` (the batch and the logits) beside it. One thread: the outputs do not
depend on the machine's cores.
"""
import argparse, configparser, json, shutil, sys
from pathlib import Path
import torch
import transformers as T
from safetensors.torch import save_file, load_file

HERE = Path(__file__).resolve().parent
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=99, max_position_embeddings=64)
ARCH = {"llama_adapter": "llama", "xattn_tuning": "t5"}   # the methods that need another architecture than BERT
# what a method needs to do something on a 2-layer model (as peft_notes.testing.FINGERPRINT_CONFIG), and a few variants
CONFIGS = {"pasta": {"special_token_ids": [1, 2]}, "fish_mask": {"density": 0.05}, "lt_sft": {"density": 0.05, "select_steps": 2},
           "diff_pruning": {"density": 0.05, "search_steps": 2}, "far": {"select_steps": 2}, "spt": {"density": 0.2, "r": 1},
           "autopeft": {"serial_size": 4, "parallel_size": 4, "prefix_length": 3, "layers_to_transform": [1]},
           "s4": {"strategies": ["AL", "AP", "AP", "PL"]}}
VARIANTS = {"lora_pissa": ("lora", {"init_lora_weights": "pissa"}), "lora_head": ("lora", {"modules_to_save": ["classifier"], "bias": "all"}),
            "houlsby_drop": ("houlsby", {"adapter_drop": 1})}

def make_base(arch:str)->torch.nn.Module:
    "A tiny base of `arch` (seeded; its weights are then replaced by the stored ones)."
    torch.manual_seed(0)
    if arch == "bert": return T.BertForSequenceClassification(T.BertConfig(**SMALL, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    if arch == "llama": return T.LlamaForCausalLM(T.LlamaConfig(**SMALL))
    return T.T5ForConditionalGeneration(T.T5Config(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, vocab_size=99,
                                                   dropout_rate=0.0, decoder_start_token_id=0))

def load_base(folder:Path, arch:str)->torch.nn.Module:
    "The stored tiny base of `arch`, in eval mode."
    m = make_base(arch)
    missing, unexpected = m.load_state_dict(load_file(folder / "bases" / f"{arch}.safetensors"), strict=False)
    tied = {k for k in missing if k.endswith(("lm_head.weight", "decoder.embed_tokens.weight", "encoder.embed_tokens.weight"))}
    if set(missing) - tied or unexpected: raise ValueError(f"stored base {arch}: missing {missing}, unexpected {unexpected}")
    return m.eval()

def batch(arch:str)->dict:
    "The fixed batch: two rows of ten token ids, the special ids 1 and 2 at the ends (PASTA's), labels for the loss."
    ids = torch.randint(3, 99, (2, 10), generator=torch.Generator().manual_seed(1)); ids[:, 0], ids[:, -1] = 1, 2
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1]) if arch == "bert" else ids}

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--release", default=None, help="folder name (default: settings.ini's version)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from peft_notes.core import get_peft_model, list_methods
    ini = configparser.ConfigParser(); ini.read(HERE.parent.parent / "settings.ini")
    out = HERE / (args.release or ini["DEFAULT"]["version"])
    if out.exists(): shutil.rmtree(out)
    (out / "bases").mkdir(parents=True)
    for arch in ("bert", "llama", "t5"):
        save_file({k: v.contiguous() for k, v in make_base(arch).state_dict().items()
                   if not k.endswith(("lm_head.weight", "decoder.embed_tokens.weight", "encoder.embed_tokens.weight"))},
                  str(out / "bases" / f"{arch}.safetensors"))
    methods = {n: (n, CONFIGS.get(n, {})) for n, c in list_methods().items() if c.__module__.startswith("peft_notes.")}
    for name, (method, kw) in {**methods, **VARIANTS}.items():
        arch = ARCH.get(method, "bert")
        model, b = load_base(out, arch), batch(arch)
        torch.manual_seed(0)
        pm = get_peft_model(model, list_methods()[method](**kw))
        pm.before_training([b])
        opt = torch.optim.Adam([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
        pm.train()
        for step in range(3):
            pm.before_step(step, 3); opt.zero_grad(); pm(**b).loss.backward(); opt.step(); pm.after_step(step, 3)
        pm.eval()
        with torch.no_grad(): logits = pm(**b).logits
        pm.save_adapter(out / name)
        save_file({"logits": logits.contiguous(), **{k: v.clone() for k, v in b.items()}}, str(out / name / "expected.safetensors"))
        (out / name / "made.json").write_text(json.dumps({"method": method, "arch": arch, "config": kw}, indent=1, sort_keys=True))
        print(f"{name:16s} {arch:6s} {sum(f.stat().st_size for f in (out / name).iterdir()):>8,} bytes")

if __name__ == "__main__": main()
