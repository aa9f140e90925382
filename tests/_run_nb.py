"""Run one notebook as `nbdev_test` does (cells flagged `slow` or `eval: false` skipped), then check what a reader sees:
every displayed cell that printed or displayed something when it ran must carry that output in the stored notebook,
or the rendered page shows prose about a table or figure that is not there.

Usage: [PEFT_NOTES_SLOW=1] python tests/_run_nb.py NOTEBOOK REPO_ROOT   (exit 1: a cell failed; exit 2: displayed cells without stored output)"""
import os, sys
from pathlib import Path
from execnb.shell import CaptureShell
from fastcore.xtras import working_directory
from nbdev.frontmatter import FrontmatterProc
from nbdev.process import NBProcessor

SKIP_FLAGS = set() if os.environ.get("PEFT_NOTES_SLOW") == "1" else {"slow"}   # `make slow` runs the slow cells too
NOT_SHOWN = {"hide", "export", "exports", "exporti"}   # directives whose cell the page does not show with its output

def skipped(cell)->bool:
    "The cells nbdev_test does not run."
    if cell.cell_type != "code" or "nbdev_export(" in cell.source: return True
    d = getattr(cell, "directives_", {}) or {}
    return d.get("eval:", [""])[0].lower() == "false" or bool(SKIP_FLAGS & d.keys())

def shown(cell)->bool:
    "Does the rendered page show this cell's output?"
    d = getattr(cell, "directives_", {}) or {}
    return not (NOT_SHOWN & d.keys()) and d.get("output:", [""])[0].lower() != "false"

def visible(outputs)->list:
    "Outputs a reader would see (a result, a display, printed text; not warnings on stderr)."
    return [o for o in outputs if o.get("output_type") in ("execute_result", "display_data")
            or (o.get("output_type") == "stream" and o.get("name") == "stdout")]

def main(fn:Path, root:Path)->int:
    sys.path.insert(0, str(root)); os.environ["IN_TEST"] = "1"
    nb = NBProcessor(fn, procs=FrontmatterProc, process=True).nb
    stored = [visible(c.get("outputs", [])) if c.cell_type == "code" else [] for c in nb.cells]
    k = CaptureShell(fn)
    with working_directory(fn.parent):
        try: k.run_all(nb, exc_stop=True, preproc=skipped)
        except Exception:
            sys.stderr.write(k.prettytb(fname=fn) + "\n"); return 1
    blank = [(i, c.source.strip().splitlines()[-1][:80]) for i, c in enumerate(nb.cells)
             if not skipped(c) and shown(c) and visible(c.get("outputs", [])) and not stored[i]]
    if blank:
        sys.stderr.write(f"{fn.name}: {len(blank)} displayed cell(s) produce output that the stored notebook does not carry "
                         "(run the chapter and save it with its outputs):\n" + "\n".join(f"  cell {i}: ... {s}" for i, s in blank) + "\n")
        return 2
    return 0

if __name__ == "__main__": sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
