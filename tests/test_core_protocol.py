"""Core v3's protocol, checked on the code itself: the core names no method and probes no method's attributes, methods
reach the core through hooks (no forward, merge or unmerge of their own), and no module imports another's private names."""
import ast, importlib, inspect, pkgutil, re
from pathlib import Path
import pytest
import peft_notes
from peft_notes.core import AdapterLayer, list_methods

PKG = Path(peft_notes.__file__).parent
CORE = sorted((PKG / "core").glob("*.py"))

def _code_strings(tree):
    "String constants that are not docstrings."
    docs = {id(n.body[0].value) for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]

def test_the_core_names_no_method():
    "No registered method's name is an identifier or a string of the core's code (docstrings and comments may cite them)."
    names = {n for n, c in list_methods().items() if c.__module__.startswith("peft_notes.")}
    pat = re.compile(r"\b(" + "|".join(sorted(names, key=len, reverse=True)) + r")\b", re.I)
    hits = []
    for f in CORE:
        tree = ast.parse(f.read_text())
        idents = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        hits += [(f.name, s) for s in sorted(idents) + _code_strings(tree) if pat.search(s)]
    assert not hits, hits

def _method_attributes()->set:
    "Every attribute a method's code defines: assigned on self, or in a class body."
    out = set()
    for f in (PKG / "methods").rglob("*.py"):
        for n in ast.walk(ast.parse(f.read_text())):
            if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store) and isinstance(n.value, ast.Name) and n.value.id == "self": out.add(n.attr)
            if isinstance(n, ast.ClassDef):
                for b in n.body:
                    if isinstance(b, (ast.Assign, ast.AnnAssign)):
                        for t in (b.targets if isinstance(b, ast.Assign) else [b.target]):
                            if isinstance(t, ast.Name): out.add(t.id)
    return out

def test_the_core_probes_no_method_attribute():
    "hasattr/getattr in the core only ask about torch's and transformers' attributes, never one a method defines."
    own = _method_attributes() - {n for f in CORE for n in _defined_in(f)}   # names the core declares itself (hooks, layer attributes) are its own
    probes = []
    for f in CORE:
        for n in ast.walk(ast.parse(f.read_text())):
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("hasattr", "getattr") and len(n.args) >= 2 \
                    and isinstance(n.args[1], ast.Constant) and n.args[1].value in own:
                probes.append((f.name, n.lineno, n.args[1].value))
    assert not probes, probes
    assert "lora_init" in own   # the check sees the methods' attributes (PiSSA's, which the core used to probe)

def _defined_in(f):
    tree = ast.parse(f.read_text())
    return {t.attr for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Attribute)} | \
           {t.id for n in ast.walk(tree) if isinstance(n, ast.ClassDef) for b in n.body if isinstance(b, (ast.Assign, ast.AnnAssign))
            for t in (b.targets if isinstance(b, ast.Assign) else [b.target]) if isinstance(t, ast.Name)} | \
           {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}

def _method_layer_classes():
    import peft_notes.methods as pkg
    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        mod = importlib.import_module(m.name)
        for _, c in inspect.getmembers(mod, inspect.isclass):
            if issubclass(c, AdapterLayer) and c.__module__ == mod.__name__: yield c

def test_no_method_layer_overrides_forward_merge_or_unmerge():
    "A method's layer declares hooks (adapt_args, adapt_input, combine, restore_base, fused_forward, fold); the core's forward and merge run them."
    classes = list(_method_layer_classes())
    assert len(classes) >= 20
    own = {(c.__name__, k) for c in classes for k in ("forward", "forward_plain", "routed_forward", "merge", "unmerge") if k in vars(c)}
    assert not own, sorted(own)

def test_no_private_name_is_imported_across_modules():
    bad = []
    for f in PKG.rglob("*.py"):
        for n in ast.walk(ast.parse(f.read_text())):
            if isinstance(n, ast.ImportFrom) and ((n.module or "").startswith("peft_notes") or n.level):
                bad += [(str(f.relative_to(PKG)), a.name) for a in n.names if a.name.startswith("_")]
    assert not bad, bad

def test_lora_does_not_import_dora():
    "DoRA builds on LoRA; LoRA reads a PEFT DoRA file through the registry, not by importing DoRA's module."
    tree = ast.parse((PKG / "methods" / "reparameterized" / "lora.py").read_text())
    mods = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)] + [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in mods if "dora" in m]
