"""Run one notebook as `nbdev_test` does (cells flagged `slow` or `eval: false` skipped), then check what a reader sees:
1. every displayed cell that printed or displayed something when it ran carries that output in the stored notebook
   (or the rendered page shows prose about a table or figure that is not there);
2. that stored output is what the cell produces now: its text (printed lines, a result's text and HTML forms) equals the
   fresh text, numbers within one unit of their last printed digit or 0.1% of their size, whichever is larger (a float
   printed to all its digits carries the last bits of sums that differ between CPUs: AVX-512 and AVX2 kernels add in
   another order, and the suite must pass on either). A cell whose numbers come out of training carries those differences
   into the third digit (an accuracy moves by an example or two): `#| approx 0.02` compares its numbers within that
   absolute tolerance. Cells whose output legitimately changes from run to
   run (timings, progress bars, memory read from the OS) carry the `#| varies` directive and are not compared; pictures
   are not compared (their bytes change with matplotlib's version; the numbers they plot come from cells that are).

Usage: [PEFT_NOTES_SLOW=1] [PEFT_NOTES_REFRESH=1] python tests/_run_nb.py NOTEBOOK REPO_ROOT
exit 1: a cell failed; 2: displayed cells without stored output; 3: stored outputs that differ from the fresh ones.
PEFT_NOTES_REFRESH=1 writes the fresh outputs of the cells that ran back into the notebook (then run `nbdev_clean`)."""
import os, re, sys
from pathlib import Path
from execnb.shell import CaptureShell
from execnb.nbio import read_nb, write_nb
from fastcore.xtras import working_directory
from nbdev.frontmatter import FrontmatterProc
from nbdev.process import NBProcessor

SKIP_FLAGS = set() if os.environ.get("PEFT_NOTES_SLOW") == "1" else {"slow"}   # `make slow` runs the slow cells too
NOT_SHOWN = {"hide", "export", "exports", "exporti"}   # directives whose cell the page does not show with its output
TEXT_FORMS = ("text/plain", "text/html", "text/markdown", "text/latex")

def skipped(cell)->bool:
    "The cells nbdev_test does not run."
    if cell.cell_type != "code" or "nbdev_export(" in cell.source: return True
    d = getattr(cell, "directives_", {}) or {}
    return d.get("eval:", [""])[0].lower() == "false" or bool(SKIP_FLAGS & d.keys())

def shown(cell)->bool:
    "Does the rendered page show this cell's output?"
    d = getattr(cell, "directives_", {}) or {}
    return not (NOT_SHOWN & d.keys()) and d.get("output:", [""])[0].lower() != "false"

def varies(cell)->bool: return "varies" in (getattr(cell, "directives_", {}) or {})

def approx(cell)->float:
    "The absolute tolerance a `#| approx TOL` directive gives the cell's numbers (0: none)."
    d = (getattr(cell, "directives_", {}) or {}).get("approx")
    if d is None: return 0.0
    try: return float(d[0])
    except (IndexError, ValueError): raise ValueError(f"`#| approx` needs a tolerance, e.g. `#| approx 0.02`; got {d!r}") from None

def visible(outputs)->list:
    "Outputs a reader would see (a result, a display, printed text; not warnings on stderr)."
    return [o for o in outputs if o.get("output_type") in ("execute_result", "display_data")
            or (o.get("output_type") == "stream" and o.get("name") == "stdout")]

def _join(t)->str: return "".join(t) if isinstance(t, list) else str(t)

def texts(outputs)->list[str]:
    "The text a reader sees, output by output (stdout joined into one block, as the page shows it); pictures left out."
    out, stream = [], ""
    for o in visible(outputs):
        if o.get("output_type") == "stream": stream += _join(o.get("text", "")); continue
        data = o.get("data", {}) or {}
        forms = [f for f in TEXT_FORMS if f in data]
        if not forms: continue   # a picture only
        out.append(_join(data["text/html" if "text/html" in data else forms[0]]))
    return ([stream] if stream else []) + out

_NUM = re.compile(r"[-+]?(?:\d[\d,]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_ADDR = re.compile(r"0x[0-9a-fA-F]{6,}")

def _tokens(s:str)->list:
    s = _ADDR.sub("0x…", s)
    parts, last = [], 0
    for m in _NUM.finditer(s):
        parts += [s[last:m.start()], m.group(0)]; last = m.end()
    return parts + [s[last:]]

def _num(tok:str)->tuple:
    "(value, one unit of its last printed digit)"
    t = tok.replace(",", ""); mant = re.split(r"[eE]", t)[0]
    exp = int(re.split(r"[eE]", t)[1]) if re.search(r"[eE]", t) else 0
    decimals = len(mant.split(".")[1]) if "." in mant else 0
    return float(t), 10.0 ** (exp - decimals)

REL_TOL = 1e-3   # the relative difference between CPUs that a printed float may show (measured: up to 2.3e-4 between two x86 machines)

def same_text(a:str, b:str, abs_tol:float=0.0)->bool:
    "Equal text, numbers equal within one unit of the last digit either of them prints, 0.1% of the larger, or `abs_tol` (two numbers both under 1e-6 count as equal)."
    ta, tb = _tokens(a.rstrip()), _tokens(b.rstrip())
    if len(ta) != len(tb): return False
    for i, (x, y) in enumerate(zip(ta, tb)):
        if i % 2 == 0:
            if x.rstrip() != y.rstrip(): return False
            continue
        try: (vx, ux), (vy, uy) = _num(x), _num(y)
        except ValueError: return x == y
        if max(abs(vx), abs(vy)) < 1e-6: continue   # both at float precision's noise (an error of 1e-7 or 1e-9 is 'equal' either way)
        if abs(vx - vy) > max(max(ux, uy) * 1.0001, REL_TOL * max(abs(vx), abs(vy)), abs_tol): return False
    return True

def first_difference(a:str, b:str, abs_tol:float=0.0)->str:
    "The first differing line of two texts, for the report."
    for la, lb in zip(a.splitlines() + [""] * 1000, b.splitlines()):
        if not same_text(la, lb, abs_tol): return f"stored {la.strip()[:110]!r} vs now {lb.strip()[:110]!r}"
    return "(lengths differ)"

def stale_outputs(nb, stored:list)->list[tuple]:
    "(cell index, last source line, first difference) for every compared cell whose stored text differs from the fresh one."
    bad = []
    for i, c in enumerate(nb.cells):
        if skipped(c) or not shown(c) or varies(c) or not stored[i]: continue
        old, new, tol = texts(stored[i]), texts(c.get("outputs", [])), approx(c)
        if len(old) != len(new) or not all(same_text(x, y, tol) for x, y in zip(old, new)):
            diff = next((first_difference(x, y, tol) for x, y in zip(old, new) if not same_text(x, y, tol)), f"{len(old)} text output(s) stored, {len(new)} now")
            bad.append((i, c.source.strip().splitlines()[-1][:60], diff))
    return bad

def refresh(fn:Path, nb):
    "Write the fresh outputs of the cells that ran into the stored notebook (sources untouched)."
    raw = read_nb(fn)
    fresh = {c.get("id"): c.get("outputs", []) for c in nb.cells if not skipped(c) and c.get("id")}   # by id: the processed notebook's cells moved (front matter)
    for rc in raw.cells:
        if rc.cell_type == "code" and rc.get("id") in fresh: rc["outputs"] = fresh[rc["id"]]
    write_nb(raw, fn)

def main(fn:Path, root:Path)->int:
    sys.path.insert(0, str(root)); os.environ["IN_TEST"] = "1"
    nb = NBProcessor(fn, procs=FrontmatterProc, process=True).nb
    stored = [visible(c.get("outputs", [])) if c.cell_type == "code" else [] for c in nb.cells]
    k = CaptureShell(fn)
    with working_directory(fn.parent):
        try: k.run_all(nb, exc_stop=True, preproc=skipped)
        except Exception:
            sys.stderr.write(k.prettytb(fname=fn) + "\n"); return 1
    if os.environ.get("PEFT_NOTES_REFRESH") == "1":
        for i, s, d in stale_outputs(nb, stored): sys.stderr.write(f"{fn.name}: refreshed cell {i} (... {s}): {d}\n")
        refresh(fn, nb); return 0
    blank = [(i, c.source.strip().splitlines()[-1][:80]) for i, c in enumerate(nb.cells)
             if not skipped(c) and shown(c) and visible(c.get("outputs", [])) and not stored[i]]
    if blank:
        sys.stderr.write(f"{fn.name}: {len(blank)} displayed cell(s) produce output that the stored notebook does not carry "
                         "(run the chapter and save it with its outputs):\n" + "\n".join(f"  cell {i}: ... {s}" for i, s in blank) + "\n")
        return 2
    if (bad := stale_outputs(nb, stored)):
        sys.stderr.write(f"{fn.name}: {len(bad)} displayed cell(s) show a stored output that is not what they produce now "
                         "(re-run the chapter with PEFT_NOTES_REFRESH=1, or mark a cell whose output legitimately changes `#| varies`):\n"
                         + "\n".join(f"  cell {i} (... {s}): {d}" for i, s, d in bad) + "\n")
        return 3
    return 0

if __name__ == "__main__": sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
