"""The package's import graph: no cycles (function-level imports included), lower layers never import higher
ones, no private name imported across modules, and every module imports in a fresh interpreter."""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "probface_tf")
# A module of the left layer may not import any of the right ones (data -> models/methods -> train; models and
# methods -> eval, export).
FORBIDDEN = {
    "probface_tf.data": ("probface_tf.models", "probface_tf.methods", "probface_tf.train", "probface_tf.eval"),
    "probface_tf.models": ("probface_tf.methods", "probface_tf.train", "probface_tf.eval", "probface_tf.export"),
    "probface_tf.methods": ("probface_tf.train", "probface_tf.eval", "probface_tf.export"),
}


def _modules() -> dict:
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                found[module[:-len(".__init__")] if module.endswith(".__init__") else module] = path
    return found


def _imports(path: str, modules: dict) -> list:
    """``(imported module, imported name or None)`` for every import of the package anywhere in the file."""
    out = []
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names if a.name.startswith("probface_tf")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("probface_tf"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.append((full, None) if full in modules else (node.module, alias.name))
    return out


@pytest.fixture(scope="module")
def graph():
    modules = _modules()
    return modules, {m: _imports(p, modules) for m, p in modules.items()}


def _cycles(edges: dict) -> list:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles(graph):
    modules, imports = graph
    edges = {m: {t for t, _ in found if t in modules and t != m} for m, found in imports.items()}
    assert _cycles(edges) == []


def test_lower_layers_do_not_import_higher_ones(graph):
    _, imports = graph
    bad = [(m, t) for m, found in imports.items() for layer, above in FORBIDDEN.items()
           if m.startswith(layer) for t, _ in found if t.startswith(above)]
    assert bad == []


def test_no_private_names_across_modules(graph):
    _, imports = graph
    bad = [(m, f"{t}.{name}") for m, found in imports.items() for t, name in found
           if name is not None and name.startswith("_") and t != m]
    assert bad == []


def test_every_module_imports_in_a_fresh_interpreter(graph):
    modules, _ = graph
    script = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", script, *sorted(modules)], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
