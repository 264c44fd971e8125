"""``module:function`` names: their form, the ``--allow`` rule, and a look that imports nothing.

The worker applies the allow rule before it runs a call; the node pool applies the same rule,
and :func:`missing_function`, before it creates a task, so a typo or a module no worker runs is
refused at submit time instead of failing on a worker later.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
from collections.abc import Iterable
from importlib.machinery import PathFinder
from pathlib import Path

FUNCTION_NAME = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):([A-Za-z_]\w*)$")


def split_function_name(name: str) -> tuple[str, str] | None:
    """``("pkg.mod", "fn")`` for ``"pkg.mod:fn"``; None when it is not of that form."""
    match = FUNCTION_NAME.match(name)
    return (match.group(1), match.group(2)) if match else None


def module_allowed(module: str, allowed: Iterable[str]) -> bool:
    """A module is allowed when it or a package above it is in ``allowed``."""
    return any(module == name or module.startswith(name + ".") for name in allowed if name)


def missing_function(module: str, attribute: str) -> str | None:
    """Why ``module:attribute`` cannot be called, when that is certain without running any of
    its code; None when it is there or when this process cannot tell (the module is not on
    this process's path, is compiled, or makes names at run time)."""
    source = _module_source(module)
    if source is None:
        return None
    names = _top_level_names(str(source), source.stat().st_mtime_ns)
    if names is None or attribute in names:
        return None
    return f"module {module!r} ({source}) defines no {attribute!r}"


def _module_source(module: str) -> Path | None:
    """The .py file of ``module``, found the way import would find it, but with PathFinder
    alone so that no package's ``__init__`` runs here."""
    search: list[str] = list(sys.path)
    parts = module.split(".")
    spec = None
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        loaded = sys.modules.get(name)
        if loaded is not None and getattr(loaded, "__spec__", None) is not None:
            spec = loaded.__spec__
        else:
            try:
                spec = PathFinder.find_spec(name, search)
            except (ImportError, ValueError):
                return None
        if spec is None:
            return None
        search = list(spec.submodule_search_locations or [])
    origin = getattr(spec, "origin", None)
    if not isinstance(origin, str) or not origin.endswith(".py"):
        return None
    path = Path(origin)
    return path if path.is_file() else None


@functools.lru_cache(maxsize=256)
def _top_level_names(path: str, _mtime_ns: int) -> frozenset[str] | None:
    """Names a module binds at its top level; None when it may bind others at run time (a
    star import, a module ``__getattr__``, writes to ``globals()``) or does not parse."""
    try:
        tree = ast.parse(Path(path).read_bytes(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return None
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("globals", "setattr"):
            return None
    for node in _top_level_statements(tree.body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    if "__getattr__" in names:
        return None
    return frozenset(names)


def _top_level_statements(body: list[ast.stmt]) -> Iterable[ast.stmt]:
    """Statements that run at import: the body, and the branches of top-level if/try/with."""
    for node in body:
        yield node
        if isinstance(node, ast.If):
            yield from _top_level_statements(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            handlers = [stmt for h in node.handlers for stmt in h.body]
            yield from _top_level_statements(node.body + handlers + node.orelse + node.finalbody)
        elif isinstance(node, (ast.With, ast.AsyncWith, ast.For, ast.While)):
            yield from _top_level_statements(node.body)
