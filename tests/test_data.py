"""Data loading: the shipped task offline, local files through PEFT_NOTES_DATA, and clear errors when neither source works."""
import os
import pytest
from peft_notes import data

def test_bbc_split_is_stratified_and_repeatable():
    a, b = data.load_bbc(seed=0), data.load_bbc(seed=0)
    assert a["test"]["text"] == b["test"]["text"] and len(a["train"]) + len(a["test"]) == 2225
    from collections import Counter
    share = {k: v / len(a["test"]) for k, v in Counter(a["test"]["label"]).items()}
    assert abs(share[3] - 511 / 2225) < 0.01 and abs(share[1] - 386 / 2225) < 0.01
    assert len(data.load_bbc(train_size=100)["train"]) == 100

def test_sst2_from_the_local_folder():
    if not os.environ.get("PEFT_NOTES_DATA"): pytest.skip("PEFT_NOTES_DATA is not set on this machine")
    ds = data.load_sst2()
    assert (len(ds["train"]), len(ds["validation"])) == (67349, 872)
    assert ds["validation"].column_names == ["label", "sentence"] and set(ds["validation"]["label"]) == {0, 1}

def test_missing_local_files_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFT_NOTES_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"sst2/train\.tsv"): data.load_sst2()

def test_no_local_folder_and_no_hub_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("PEFT_NOTES_DATA", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1"); monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets.config
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(RuntimeError, match="PEFT_NOTES_DATA is not set and the hub copy 'nyu-mll/glue' could not be loaded"):
        data.load_sst2()
