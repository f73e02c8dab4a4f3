"""The house rules of the package, checked on its source: no import cycle (module level or inside functions), no
upward import between layers, the torch-free parts stay torch-free, and no module or function grows past what a
reader can hold."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "idiolect"

# Lowest first: a module may import its own layer and those below it, never one above.
LAYERS = [
    ["core.base"],
    ["core.store"],
    ["core.ingest"],
    ["core.models"],
    ["core.training"],
    ["core.persona"],
    ["core.export"],
    ["core.cli"],
    ["app", "bench"],
    ["launch"],
]
MAX_MODULE_LINES = 500  # in core/
MAX_FUNCTION_LINES = 80  # in core/, SQL migrations excepted


def modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", ".venv", "build") or any(p.startswith(".") for p in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([PACKAGE, *parts])] = path
    return out


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules a file imports, at module level and inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            # the longest known module the name starts with (a name may be a module or a name in one)
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != PACKAGE:
                found.add(name)
    return found


def layer_of(module: str) -> int:
    rel = module.removeprefix(PACKAGE + ".")
    for i, prefixes in enumerate(LAYERS):
        if any(rel == p or rel.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    g = {}
    for name, path in mods.items():
        deps = imports_of(path, known) - {name}
        # a package's __init__ is imported with any of its modules: not an edge of its own
        g[name] = {
            d for d in deps if not (d != name and name.startswith(d + ".") and mods[d].stat().st_size == 0)
        }
    return g


def test_there_is_no_import_cycle(graph):
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == []


def test_no_module_imports_a_layer_above_its_own(graph):
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if layer_of(d) > layer_of(m))
    assert upward == []


def test_the_checker_sees_cycles_and_upward_imports(tmp_path):
    """The rules above can fail: a planted cycle and a planted upward import are found."""
    (tmp_path / "a.py").write_text("def f():\n    from idiolect.core.base.b import x\n")
    (tmp_path / "b.py").write_text("from idiolect.core.cli import main\nfrom idiolect.core.base.a import f\n")
    known = {"idiolect.core.base.a", "idiolect.core.base.b", "idiolect.core.cli"}
    assert imports_of(tmp_path / "a.py", known) == {"idiolect.core.base.b"}
    assert imports_of(tmp_path / "b.py", known) == {"idiolect.core.cli", "idiolect.core.base.a"}
    assert layer_of("idiolect.core.cli") > layer_of("idiolect.core.base.b")


@pytest.mark.parametrize("module", ["idiolect.core.store", "idiolect.core.ingest.samples",
                                    "idiolect.core.ingest.peers", "idiolect.core.training.config",
                                    "idiolect.core.cli"])  # fmt: skip
def test_store_ingest_and_the_training_config_load_without_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_no_module_or_function_in_core_is_too_long_to_read():
    long_modules, long_functions = [], []
    for name, path in modules().items():
        if not name.startswith(f"{PACKAGE}.core"):
            continue
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES and not node.name.startswith("_migration_"):
                    long_functions.append(f"{name}.{node.name}: {n} lines")
    assert long_modules == [] and long_functions == []
