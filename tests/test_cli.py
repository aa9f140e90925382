"""The `peft-notes` command and the harness: bad input refused clearly, results complete, interrupts keep finished work."""
import contextlib, io, json, os, subprocess, sys
from types import SimpleNamespace
import pytest
from peft_notes import cli, train
from peft_notes.train import RESULT_FIELDS

def run(*args):
    "The command, in this process (no interpreter and torch to start each time): its exit code, stdout and stderr."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: code = cli.main(list(args))
        except SystemExit as e: code = e.code if isinstance(e.code, int) else 1   # argparse's own errors exit 2
    return SimpleNamespace(returncode=code or 0, stdout=out.getvalue(), stderr=err.getvalue())

def test_the_installed_command_runs():
    "One call through the console script's entry point in a fresh interpreter (the rest call cli.main in-process)."
    r = subprocess.run([sys.executable, "-c", "import sys; from peft_notes.cli import main; sys.exit(main())", "compare", "--methods", "nope"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "unknown method(s) ['nope']" in r.stderr, r.stderr

@pytest.mark.parametrize("args,msg", [(["compare", "--methods", "nope"], "unknown method(s) ['nope']"),
                                      (["compare", "--task", "no/such/file.csv"], "--task no/such/file.csv: no/such/file.csv: no such file or folder"),
                                      (["compare", "--task", "/no/such/folder"], "no such file or folder"),
                                      (["compare", "--lr", "fast"], "--lr must be a number or method=number"),
                                      (["compare", "--lr", "dora=1e-3"], "--lr names ['dora'], which are not among the methods"),
                                      (["compare", "--lr", "-1"], "--lr must be positive"),
                                      (["compare", "--set", "lora.r"], "--set takes [METHOD.]FIELD=VALUE"),
                                      (["compare", "--set", "lora.rank=16"], "LoraConfig has no field 'rank'; its fields: alpha, "),
                                      (["compare", "--set", "lora.r=0"], "LoraConfig.r must be a positive rank"),
                                      (["compare", "--set", "lora.r=big"], "LoraConfig.r must be int"),
                                      (["compare", "--set", "full.r=4"], "'full' is a baseline and has no config"),
                                      (["compare", "--methods", "full,head", "--set", "r=4"], "none of the methods ['full', 'head'] has a config"),
                                      (["compare", "--batch-size", "0"], "--batch-size must be positive"),
                                      (["compare", "--train-size", "0"], "--train-size must be positive"),
                                      (["compare", "--epochs", "-1"], "--epochs must be positive"),
                                      (["compare", "--methods", " , "], "--methods is empty"),
                                      (["train", "--method", "head", "--save", "x"], "--method must be a registered method"),
                                      (["eval", "--adapter", "/nonexistent"], "has no task.json"),
                                      ([], "required")])
def test_bad_arguments(args, msg):
    r = run(*args)
    assert r.returncode == 2 and msg in r.stderr, r.stderr

def test_unwritable_output_folder(tmp_path):
    f = tmp_path / "file"; f.write_text("")
    r = run("compare", "--out", str(f / "sub"))
    assert r.returncode == 2 and "cannot write to" in r.stderr, r.stderr

def test_compare_writes_every_field(tmp_path):
    r = run("compare", "--methods", "head,lora", "--train-size", "64", "--epochs", "1", "--max-length", "32", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [x["method"] for x in rows] == ["head", "lora"]
    for x in rows:
        missing = [k for k in RESULT_FIELDS + ["losses", "evals"] if k not in x or (x[k] is None and k != "torch_peak_mb")]
        assert not missing, missing
        assert x["acc_before"] >= 0 and x["median_step_s"] > 0 and x["peak_rss_mb"] > 100 and len(x["losses"]) == 2
    assert rows[1]["stored_bytes"] > rows[0]["stored_bytes"] > 0
    header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    assert header == RESULT_FIELDS
    assert {"accuracy_vs_params.png", "step_time.png", "peak_memory.png"} <= {p.name for p in tmp_path.iterdir()}
    assert any(l.startswith("lora ") for l in r.stdout.splitlines())

def test_interrupt_keeps_finished_methods(tmp_path, monkeypatch):
    from peft_notes import harness   # compare looks run_method up in the harness's module
    real = harness.run_method
    def second_interrupts(m, *a, **k):
        if m == "lora": raise KeyboardInterrupt
        return real(m, *a, **k)
    monkeypatch.setattr(harness, "run_method", second_interrupts)
    code = cli.main(["compare", "--methods", "head,lora", "--train-size", "32", "--epochs", "1", "--max-length", "16", "--out", str(tmp_path)])
    assert code == 130
    assert [x["method"] for x in json.loads((tmp_path / "results.json").read_text())] == ["head"]

def test_train_then_eval(tmp_path):
    d = tmp_path / "adapter"
    r = run("train", "--method", "lora", "--train-size", "64", "--epochs", "1", "--max-length", "32", "--save", str(d))
    assert r.returncode == 0, r.stderr
    assert {"adapter_config.json", "adapter_model.safetensors", "task.json"} <= {p.name for p in d.iterdir()}
    acc_train = r.stdout.split("->")[1].split(";")[0].strip()
    r = run("eval", "--adapter", str(d))
    assert r.returncode == 0, r.stderr
    assert r.stdout.rsplit("accuracy", 1)[1].strip() == acc_train   # the saved adapter scores what training reported, to the 3 decimals printed


def _reviews(path, n=40):
    import csv, random
    rnd, good, bad = random.Random(0), ["great", "moving", "superb", "fun", "warm"], ["dull", "awful", "boring", "flat", "tedious"]
    rows = [(f"a {rnd.choice(good)} and {rnd.choice(good)} film", "pos") if i % 2 else (f"a {rnd.choice(bad)} and {rnd.choice(bad)} film", "neg") for i in range(n)]
    with open(path, "w", newline="") as f: csv.writer(f).writerows([("review", "stars"), *rows])

def test_local_csv_task_with_columns_set_and_lr(tmp_path):
    _reviews(tmp_path / "reviews.csv")
    out = tmp_path / "out"
    r = run("compare", "--methods", "head,lora", "--task", str(tmp_path / "reviews.csv"), "--text-column", "review", "--label-column", "stars",
            "--set", "lora.r=2", "--set", "lora.target_modules=query,key,value", "--lr", "head=1e-2,lora=2e-3", "--epochs", "1",
            "--max-length", "16", "--batch-size", "8", "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = {x["method"]: x for x in json.loads((out / "results.json").read_text())}
    assert rows["lora"]["config"] == {"r": 2, "target_modules": ["query", "key", "value"]} and rows["lora"]["lr"] == 2e-3
    assert rows["head"]["lr"] == 1e-2 and rows["lora"]["train_size"] == 32 and rows["lora"]["batch_size"] == 8
    # r=2 on query, key, value of 6 layers (384 -> 384) plus the 2-class head
    assert rows["lora"]["trainable"] == 6 * 3 * 2 * (384 + 384) + 384 * 2 + 2

def test_local_task_train_then_eval_remembers_its_columns(tmp_path):
    _reviews(tmp_path / "reviews.csv")
    d = tmp_path / "adapter"
    r = run("train", "--task", str(tmp_path / "reviews.csv"), "--text-column", "review", "--label-column", "stars", "--epochs", "1",
            "--max-length", "16", "--set", "r=4", "--save", str(d))
    assert r.returncode == 0, r.stderr
    assert json.loads((d / "adapter_config.json").read_text())["r"] == 4
    acc_train = r.stdout.split("->")[1].split(";")[0].strip()
    r = run("eval", "--adapter", str(d))
    assert r.returncode == 0, r.stderr
    assert r.stdout.rsplit("accuracy", 1)[1].strip() == acc_train   # the printed values, at the precision they carry
