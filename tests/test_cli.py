"""The `peft-notes` command: bad input is refused with a clear message and exit code 2."""
import subprocess, sys
import pytest

def run(*args):
    return subprocess.run([sys.executable, "-c", "import sys; from peft_notes.cli import main; sys.exit(main())", *args],
                          capture_output=True, text=True, timeout=300)

@pytest.mark.parametrize("args,msg", [(["demo", "--methods", "nope"], "unknown method(s) ['nope']"),
                                      (["demo", "--task", "imdb"], "invalid choice: 'imdb'"),
                                      (["demo", "--train-size", "0"], "--train-size must be positive"),
                                      (["demo", "--epochs", "-1"], "--epochs must be positive"),
                                      ([], "required")])
def test_bad_arguments(args, msg):
    r = run(*args)
    assert r.returncode == 2 and msg in r.stderr, r.stderr

def test_demo_small_run_prints_the_table():
    r = run("demo", "--train-size", "64", "--epochs", "1", "--max-length", "32")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(l.startswith("head ") for l in lines) and any(l.startswith("lora ") for l in lines)
