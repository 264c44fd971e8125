"""The house's import rules, read from the source with ``ast`` (no module is imported).

- The library under ``hivemind/`` does not reach into the worker daemon: only the CLI, the
  master and the worker itself import ``hivemind.worker``.
- The doctor reads the cluster through the library (``hivemind.worker_records``,
  ``hivemind.taskstore``), never through the node pool's own modules.
- No two modules of the project import each other, directly or around a loop.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("hivemind", "doctor", "recovery")
MAY_IMPORT_WORKER = ("hivemind/cli/", "hivemind/master/", "hivemind/worker/")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _source_files() -> Iterator[Path]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "proto" not in path.parts:
                yield path


def _imports(path: Path) -> set[str]:
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path.parent)
    return _imports_in(path.read_text(encoding="utf-8"), package)


def _imports_in(source: str, package: str) -> set[str]:
    """Absolute names of the project modules ``source`` (of ``package``) imports, anywhere
    in it: a lazy import inside a function is an arrow too."""
    tree = ast.parse(source)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _arrows(prefix: str) -> list[str]:
    return [
        f"{_relative(path)} imports {name}"
        for path in _source_files()
        for name in sorted(_imports(path))
        if name == prefix or name.startswith(prefix + ".")
    ]


def test_only_cli_master_and_worker_import_the_worker() -> None:
    wrong = [
        arrow
        for arrow in _arrows("hivemind.worker")
        if arrow.startswith("hivemind/") and not arrow.startswith(MAY_IMPORT_WORKER)
    ]
    assert wrong == []


def test_the_doctor_does_not_import_the_node_pool() -> None:
    wrong = [arrow for arrow in _arrows("hivemind.nodepool") if arrow.startswith("doctor/")]
    assert wrong == []


def test_no_import_cycles() -> None:
    modules = {_module_name(path): path for path in _source_files()}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        # ``from pkg import name`` names a module when pkg.name is one, else pkg itself.
        graph[name] = {imported for imported in _imports(path) if imported in modules} - {name}
        graph[name] -= {parent for parent in graph[name] if name.startswith(parent + ".")}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append([*trail[trail.index(target) :], target])
            elif target not in state:
                visit(target, [*trail, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_walk_sees_lazy_and_relative_imports() -> None:
    # The rules above pass only if the walk finds arrows at all.
    source = "def f():\n    from ..worker import bundle\n    import hivemind.nodepool.core\n"
    found = _imports_in(source, "hivemind.cli")
    assert {"hivemind.worker", "hivemind.worker.bundle", "hivemind.nodepool.core"} <= found
    assert _imports_in("import json\nfrom typing import Any\n", "hivemind") == set()


def test_keys_holds_key_names_only() -> None:
    # Tuning constants live in hivemind.tuning; keys.py is the map of Redis' key space.
    from hivemind import keys

    not_names = {
        name: value
        for name, value in vars(keys).items()
        if name.isupper()
        and not isinstance(value, str)
        and not (isinstance(value, tuple) and all(isinstance(v, str) for v in value))
    }
    assert not_names == {}


def test_the_lua_scripts_spell_no_key_names() -> None:
    # Every key a script touches is built from hivemind.keys, so renaming one renames it there.
    source = (ROOT / "hivemind/taskstore/scripts.py").read_text(encoding="utf-8")
    spelled = [
        literal
        for literal in ("':tasks'", "':log'", "':history'", "'task:", "'worker:", "'queue:")
        if literal in source
    ]
    assert spelled == []
