"""Every adapter a release saved loads in today's code and gives the same outputs, bit for bit (files: tests/release_adapters/)."""
import importlib.util, json
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file
from peft_notes.core import PeftModel

HERE = Path(__file__).resolve().parent / "release_adapters"
_spec = importlib.util.spec_from_file_location("release_adapters_make", HERE / "make.py")
make = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(make)   # the script that wrote the files rebuilds their tiny bases

SAVED = sorted(p for p in HERE.glob("*/*") if (p / "made.json").is_file())

def test_every_saved_method_is_still_registered():
    "A release's adapters name their methods; each is still registered (0.1.0 saved all 40 of its methods)."
    from peft_notes.core import list_methods
    made = {json.loads((p / "made.json").read_text())["method"] for p in SAVED}
    assert len({p.name for p in SAVED if p.parent.name == "0.1.0"}) == 43 and made <= set(list_methods())

@pytest.mark.parametrize("folder", SAVED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_saved_adapter_loads_with_the_same_outputs(folder):
    torch.set_num_threads(1)
    made, expected = json.loads((folder / "made.json").read_text()), load_file(folder / "expected.safetensors")
    base = make.load_base(folder.parent, made["arch"])
    batch = {k: v for k, v in expected.items() if k != "logits"}
    with torch.no_grad(): y0 = base(**batch).logits
    pm = PeftModel.from_pretrained(base, folder)
    with torch.no_grad(): y = pm(**batch).logits
    assert not torch.equal(y0, expected["logits"]), "the stored adapter does not change the base's output: it checks nothing"
    # the same outputs up to the last bits of float sums, which differ between CPUs (AVX-512 and AVX2 kernels): seen up to 7.5e-8
    torch.testing.assert_close(y, expected["logits"], atol=1e-6, rtol=1e-5, msg=lambda m: f"{folder.name}: {m}")
