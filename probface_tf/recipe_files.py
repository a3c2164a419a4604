"""Running recipe files and reading which keys they compute from which (``config.load_config`` uses both).

A recipe builds on another by importing it: ``from resface64_msarcface import *``. While a recipe runs, its own
folder and the shipped ``configs/`` are importable (so a run's copy of a recipe still finds its base), and the
recipes imported are dropped from ``sys.modules`` afterwards: every load reads the files afresh, and no two
loads share a base recipe's dicts.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import sys
import types

SHIPPED_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def search_folders(path: str) -> list[str]:
    """Where ``from <base> import *`` in the recipe ``path`` finds ``<base>.py``, first match wins."""
    own = os.path.dirname(os.path.abspath(path))
    return [own] if own == SHIPPED_CONFIGS else [own, SHIPPED_CONFIGS]


def execute(path: str) -> types.ModuleType:
    """Run the recipe file as a module (exceptions propagate to the caller, which names the file)."""
    folders = search_folders(path)
    known = set(sys.modules)
    sys.path[:0] = folders
    try:
        spec = importlib.util.spec_from_file_location("probface_recipe", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        for folder in folders:
            sys.path.remove(folder)
        for name in set(sys.modules) - known:
            origin = getattr(sys.modules[name], "__file__", None) or ""
            if os.path.dirname(os.path.abspath(origin)) in folders:
                del sys.modules[name]


def _base_file(node: ast.ImportFrom, folders: list[str]) -> str | None:
    if node.level or not node.module or [a.name for a in node.names] != ["*"]:
        return None
    for folder in folders:
        candidate = os.path.join(folder, node.module + ".py")
        if os.path.isfile(candidate):
            return candidate
    return None


def assignment_reads(path: str, _seen: frozenset = frozenset()) -> dict[str, set[str]]:
    """For every top-level name the recipe (or a base it star-imports) assigns, the names its last assignment
    reads, followed through intermediate names: ``lr = 0.01; schedule = {0: lr}`` gives ``{'schedule': {'lr'}}``.
    Functions (``def key(c)``) are not assignments: they are evaluated on the final config."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    reads: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            base = _base_file(node, search_folders(path))
            if base is not None and base not in _seen:
                reads.update(assignment_reads(base, _seen | {path}))
            continue
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):  # rebinds the name: no longer an assignment
            reads.pop(node.name, None)
            continue
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        direct = {n.id for n in ast.walk(value) if isinstance(n, ast.Name)}
        if isinstance(node, ast.AugAssign):
            direct.add(node.target.id if isinstance(node.target, ast.Name) else "")
        closure = set(direct).union(*(reads.get(name, set()) for name in direct))
        for target in targets:
            for name in (n.id for n in ast.walk(target) if isinstance(n, ast.Name)):
                reads[name] = closure - {name}
    return reads
