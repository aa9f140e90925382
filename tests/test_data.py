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


ROWS = [("a fine film", "pos"), ("dull", "neg"), ("a delight", "pos"), ("tedious", "neg"), ("warm", "pos"),
        ("a mess", "neg"), ("sharp", "pos"), ("flat", "neg"), ("lovely", "pos"), ("boring", "neg")]

@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl", "parquet"])
def test_local_files_of_every_format(tmp_path, fmt):
    import pandas as pd
    df, f = pd.DataFrame(ROWS, columns=["review", "sentiment"]), tmp_path / f"r.{fmt}"
    {"csv": lambda: df.to_csv(f, index=False), "tsv": lambda: df.to_csv(f, sep="\t", index=False),
     "json": lambda: df.to_json(f, orient="records", lines=True), "jsonl": lambda: df.to_json(f, orient="records", lines=True),
     "parquet": lambda: df.to_parquet(f)}[fmt]()
    ds, n = data.load_classification(str(f), text_column="review", label_column="sentiment")
    assert n == 2 and ds["train"].features["label"].names == ["neg", "pos"] and len(ds["train"]) == 8 and len(ds["test"]) == 2
    assert sorted(ds["test"]["label"]) == [0, 1]   # stratified
    assert ds["train"].column_names == ["text", "label"]

def test_folder_like_a_hub_repo_uses_its_splits_and_integer_labels(tmp_path):
    import pandas as pd
    (tmp_path / "repo").mkdir()
    pd.DataFrame([(t, i % 3) for i, (t, _) in enumerate(ROWS)], columns=["sentence", "label"]).to_csv(tmp_path / "repo" / "train.csv", index=False)
    pd.DataFrame([("unseen", 2)], columns=["sentence", "label"]).to_csv(tmp_path / "repo" / "validation.csv", index=False)
    pd.DataFrame([("unlabelled", -1)], columns=["sentence", "label"]).to_csv(tmp_path / "repo" / "test.csv", index=False)
    ds, n = data.load_classification(str(tmp_path / "repo"))
    assert n == 3 and len(ds["train"]) == 10 and ds["test"]["text"] == ["unseen"]   # validation, not the unlabelled test split

@pytest.mark.parametrize("kw,msg", [(dict(text_column="body"), "no text column 'body'"), (dict(text_column="review", label_column="stars"), "no label column 'stars'"),
                                    (dict(), "which column is the text")])
def test_bad_columns_are_named(tmp_path, kw, msg):
    import pandas as pd
    pd.DataFrame([(t, l, "x") for t, l in ROWS], columns=["review", "label", "note"]).to_csv(tmp_path / "r.csv", index=False)
    with pytest.raises(ValueError, match=msg): data.load_classification(str(tmp_path / "r.csv"), **kw)

def test_float_labels_and_unknown_suffix_are_refused(tmp_path):
    import pandas as pd
    pd.DataFrame([(t, 0.5) for t, _ in ROWS], columns=["text", "label"]).to_csv(tmp_path / "r.csv", index=False)
    with pytest.raises(ValueError, match="must hold class names or ids"): data.load_classification(str(tmp_path / "r.csv"))
    (tmp_path / "r.xlsx").write_text("")
    with pytest.raises(ValueError, match="cannot read a .xlsx file"): data.load_classification(str(tmp_path / "r.xlsx"))

def test_hub_name_offline_is_a_clear_error(monkeypatch):
    import datasets.config
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(RuntimeError, match="'someone/reviews:default' is not a local file or folder and could not be loaded from the hub"):
        data.load_classification("someone/reviews:default")
