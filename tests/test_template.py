"""The template chapter does what it promises a reader: copied into a scratch nbdev project and renamed, it exports a
method module that the command line imports and trains."""
import configparser, json, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CLI = [sys.executable, "-c", "import sys; from peft_notes.cli import main; sys.exit(main())"]

def test_template_copied_renamed_exported_and_trained(tmp_path):
    proj = tmp_path / "myext_project"; (proj / "nbs").mkdir(parents=True)
    cfg = configparser.ConfigParser(interpolation=None); cfg.read(ROOT / "settings.ini")
    cfg["DEFAULT"].update(lib_name="myext", lib_path="myext", repo="myext", nbs_path="nbs", doc_path="_docs")
    with open(proj / "settings.ini", "w") as f: cfg.write(f)
    src = (ROOT / "nbs" / "99_new_method.ipynb").read_text()
    assert 'register_method(\\"rank_one\\")' in src and "default_exp examples.rank_one" in src
    src = src.replace('register_method(\\"rank_one\\")', 'register_method(\\"my_rank_one\\")').replace("default_exp examples.rank_one", "default_exp my_method")
    (proj / "nbs" / "00_my_method.ipynb").write_text(src)

    r = subprocess.run([str(BIN / "nbdev_export")], cwd=proj, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    mod = proj / "myext" / "my_method.py"
    code = mod.read_text()
    assert '@register_method("my_rank_one")' in code and "class RankOneLayer" in code and "check_method" not in code   # only the exported cells

    save = tmp_path / "adapter"
    r = subprocess.run([*CLI, "train", "--import", str(mod), "--method", "my_rank_one", "--train-size", "64", "--epochs", "1",
                        "--max-length", "32", "--lr", "1e-2", "--save", str(save)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((save / "adapter_config.json").read_text())["method"] == "my_rank_one"
    assert "my_rank_one on bbc: accuracy" in r.stdout
    r2 = subprocess.run([*CLI, "eval", "--import", str(mod), "--adapter", str(save), "--max-length", "32"], capture_output=True, text=True, timeout=900)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert r2.stdout.rsplit("accuracy", 1)[1].strip() == r.stdout.split("->")[1].split(";")[0].strip()   # the saved adapter scores what training printed
