"""Layers point down, and no import cycle: the static import graph of kbsync/.

    base (errors, text, output, home)
    facts <- plan, config
    lm <- editing <- evaluate
    store (beside: facts and plan below it, nothing of the model chain)
    run: apply, scheduler, commit, sync, bench, report, history, recovery, project, testing
    cli (the kbsync.cli package, kbsync.__main__)

A module imports its own layer and the layers LAYERS lists under it, nothing else; every
import counts, lazy ones inside functions too, and relative ones are resolved. The graph
has no cycle (ALLOWED would name an exception; it is empty). Importing kbsync.a.b runs the packages kbsync.a
on the way, so an import is an edge to each of them as well (the root package `kbsync`
excepted: every module runs it, and it imports nothing at module level, checked below).

A new module needs a layer: add its prefix to LAYER_OF.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

import kbsync

PACKAGE_DIR = Path(kbsync.__file__).resolve().parent

# module (or package) name -> layer; the longest matching prefix wins
LAYER_OF = {
    "kbsync.errors": "base", "kbsync.text": "base", "kbsync.output": "base",
    "kbsync.home": "base",
    "kbsync.facts": "facts",
    "kbsync.plan": "plan",
    "kbsync.config": "config",        # reads kbsync.yaml with the facts' YAML reader
    "kbsync.lm": "lm",
    "kbsync.editing": "editing",
    "kbsync.evaluate": "evaluate",
    "kbsync.store": "store",
    "kbsync.apply": "run", "kbsync.scheduler": "run", "kbsync.sync": "run", "kbsync.bench": "run",
    "kbsync.report": "run", "kbsync.history": "run", "kbsync.recovery": "run",
    "kbsync.retry": "run", "kbsync.triage": "run", "kbsync.commit": "run",
    "kbsync.rebase": "run", "kbsync.wall": "run",
    "kbsync.project": "run", "kbsync.testing": "run",
    "kbsync.cli": "cli", "kbsync.__main__": "cli",
    "kbsync": "root",                 # the package's __init__: the public facade
}

# layer -> the layers under it that it may import (its own layer it always may)
BELOW: dict[str, set[str]] = {
    "base": set(),
    "facts": {"base"},
    "plan": {"base", "facts"},
    "config": {"base", "facts"},
    "lm": {"base"},
    "editing": {"base", "lm"},
    "evaluate": {"base", "lm", "editing"},
    "store": {"base", "facts", "plan"},
    "run": {"base", "facts", "plan", "config", "lm", "editing", "evaluate", "store"},
    "cli": {"base", "facts", "plan", "config", "lm", "editing", "evaluate", "store", "run"},
    "root": {"base", "facts", "plan", "config", "lm", "editing", "evaluate", "store", "run",
             "cli"},
}

# (importer, imported) patterns whose edges the cycle check leaves out: none since the
# CLI became a package that registers its commands in one place
# (kbsync.cli.main -> command modules -> printers -> options).
ALLOWED: list[tuple[str, str]] = []


# -- the graph ---------------------------------------------------------------------------
def modules(package_dir: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (a package is its __init__)."""
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        found[".".join(parts)] = path
    return found


def _imported_names(name: str, path: Path, tree: ast.AST):
    """Every name an import statement anywhere in the module (functions included) asks for."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if is_package else name.split(".")[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            yield base
            for alias in node.names:
                yield f"{base}.{alias.name}"


def _named_modules(tree: ast.AST):
    """Modules named, not imported: "module:Class" tables (editing/registry.py) and
    import_module("...") with a literal. Their layer is checked; they make no cycle (the
    tables are how a base names its kinds without importing them)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            if ":" in text and " " not in text and text.count(":") == 1:
                module, attr = text.split(":")
                if module.startswith("kbsync.") and attr.isidentifier():
                    yield module
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(
                node.func, "attr", None)) == "import_module" and node.args \
                and isinstance(node.args[0], ast.Constant):
            yield node.args[0].value


def import_graph(package_dir: Path) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(imports, named): module -> the package's modules it imports (and the packages it
    runs on the way), module -> the modules it names in a lazy table."""
    mods = modules(package_dir)
    root = package_dir.name

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in mods:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    def targets(importer: str, dotted: str) -> set[str]:
        target = resolve(dotted) if dotted.split(".")[0] == root else None
        if target is None:
            return set()
        out = set()
        parts = target.split(".")
        for i in range(2, len(parts) + 1):   # the packages on the way, then the module
            step = ".".join(parts[:i])
            if step != importer and not importer.startswith(step + "."):
                out.add(step)
        return out

    imports, named = {}, {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        imports[name] = set().union(*(targets(name, d) for d in _imported_names(name, path, tree)))
        named[name] = set().union(*(targets(name, d) for d in _named_modules(tree))) - imports[name]
    return imports, named


def layer_of(module: str) -> str | None:
    best = None
    for prefix, layer in LAYER_OF.items():
        if fnmatch.fnmatchcase(module, prefix) or fnmatch.fnmatchcase(module, prefix + ".*"):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, layer)
    return best[1] if best else None


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for importer, imported in sorted(edges.items()):
        low = layer_of(importer)
        for target in sorted(imported):
            high = layer_of(target)
            if high != low and high not in BELOW.get(low, set()):
                bad.append(f"{importer} ({low}) imports {target} ({high})")
    return bad


def allowed(importer: str, imported: str) -> bool:
    return any(fnmatch.fnmatchcase(importer, a) and fnmatch.fnmatchcase(imported, b)
               for a, b in ALLOWED)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected sets of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return sorted(found)


def without_allowed(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: {t for t in ts if not allowed(m, t)} for m, ts in edges.items()}


# -- kbsync's own graph ------------------------------------------------------------------
@pytest.fixture(scope="module")
def graph():
    return import_graph(PACKAGE_DIR)


def test_every_module_has_a_layer(graph):
    imports, _ = graph
    missing = [m for m in sorted(imports) if layer_of(m) is None]
    assert not missing, f"add these to LAYER_OF in tests/test_layers.py: {missing}"


def test_no_module_imports_a_layer_above_it(graph):
    imports, named = graph
    assert upward_imports(imports) == []
    assert upward_imports(named) == []      # "module:Class" tables name no layer above


def test_no_import_cycle(graph):
    imports, _ = graph
    assert cycles(without_allowed(imports)) == []


def test_allowed_cycle_is_still_needed(graph):
    """An ALLOWED pattern that no longer matches an edge on a cycle goes from the list."""
    imports, _ = graph
    on_cycles = {m for c in cycles(imports) for m in c}
    used = {(a, b) for m in on_cycles for t in imports[m] & on_cycles
            for a, b in ALLOWED if fnmatch.fnmatchcase(m, a) and fnmatch.fnmatchcase(t, b)}
    assert used == set(ALLOWED), f"remove from ALLOWED: {set(ALLOWED) - used}"


def test_the_package_root_imports_nothing_at_module_level():
    """Every module runs kbsync/__init__.py: an import there would be everyone's import."""
    tree = ast.parse((PACKAGE_DIR / "__init__.py").read_text(encoding="utf-8"))
    top = [ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
           and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")]
    assert [line for line in top if "kbsync" in line or line.startswith("from .")] == []


# -- the checker catches what it should --------------------------------------------------
def _package(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "kbsync"
    for rel, text in {"__init__.py": "", **files}.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return pkg


def test_checker_sees_lazy_relative_and_upward_imports(tmp_path):
    pkg = _package(tmp_path, {
        "lm/__init__.py": "",
        "lm/score.py": "def f():\n    from ..editing.tokens import encode\n",
        "editing/__init__.py": "",
        "editing/tokens.py": "from . import keys\n",
        "editing/keys.py": "import kbsync.lm.score\n",
        "editing/rebuild.py": "def g():\n    import kbsync.store.objects\n",
        "editing/registry.py": "EDITORS = {'x': 'kbsync.apply:Thing'}\n",
        "store/__init__.py": "",
        "store/objects.py": "",
        "apply.py": "",
    })
    imports, named = import_graph(pkg)
    assert imports["kbsync.lm.score"] == {"kbsync.editing", "kbsync.editing.tokens"}
    assert imports["kbsync.editing.tokens"] == {"kbsync.editing.keys"}
    assert "kbsync.lm.score" in imports["kbsync.editing.keys"]
    assert upward_imports(imports) == [
        "kbsync.editing.rebuild (editing) imports kbsync.store (store)",
        "kbsync.editing.rebuild (editing) imports kbsync.store.objects (store)",
        "kbsync.lm.score (lm) imports kbsync.editing (editing)",
        "kbsync.lm.score (lm) imports kbsync.editing.tokens (editing)",
    ]
    assert upward_imports(named) == ["kbsync.editing.registry (editing) imports kbsync.apply (run)"]
    assert cycles(imports) == [["kbsync.editing.keys", "kbsync.editing.tokens", "kbsync.lm.score"]]


def test_checker_reports_every_cycle_the_cli_included(tmp_path):
    pkg = _package(tmp_path, {
        "cli.py": "from kbsync import cli_model\n",
        "cli_model.py": "from kbsync.cli import main\n",
        "sync/__init__.py": "",
        "sync/watch.py": "from kbsync.sync import cycle\n",
        "sync/cycle.py": "def run():\n    from kbsync.sync.watch import watch\n",
    })
    imports, _ = import_graph(pkg)
    assert cycles(imports) == [["kbsync.cli", "kbsync.cli_model"],
                               ["kbsync.sync.cycle", "kbsync.sync.watch"]]
    # ALLOWED is empty: a cli <-> cli_* cycle is reported like any other
    assert cycles(without_allowed(imports)) == cycles(imports)
