"""The layering README promises, read from the source: the components share `core/` and
never import each other, `core/` imports none of them, and no modules import in a circle.

Every import counts, including those inside functions: an import deferred to run time is
still a dependency, only a later one.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = ("dicom_node", "worker", "reports", "web", "training", "outputs", "forwarder")
PACKAGES = ("core", "migrations", "pneumotriage", *COMPONENTS)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project's modules that `path` imports (`from a import b` is `a.b` when that is a
    module, `a` otherwise)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _package(module: str) -> str:
    return module.split(".", 1)[0]


def test_components_import_only_core_and_themselves() -> None:
    crossings = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        if _package(module) in COMPONENTS
        for target in targets
        if _package(target) not in ("core", _package(module))
    ]
    assert crossings == []


def test_core_imports_no_component_and_migrations_only_core() -> None:
    crossings = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in targets
        if (_package(module) == "core" and _package(target) not in ("core", "migrations"))
        or (_package(module) == "migrations" and _package(target) not in ("core", "migrations"))
    ]
    assert crossings == []


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components: any component of more than one module is a
    cycle (a module importing itself is left out of the graph)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            members = set()
            while (member := stack.pop()) != module:
                members.add(member)
            if members:
                cycles.append(members | {module})

    for module in graph:
        if module not in index:
            visit(module)
    return cycles


def test_no_import_cycle() -> None:
    assert _cycles(_graph()) == []


def test_the_check_sees_a_crossing_and_a_cycle(tmp_path: Path) -> None:
    """The checks above are only as good as the import reading: it must find both forms."""
    modules = {"worker.pipeline": Path(), "dicom_node.ingest": Path(), "core.lifecycle": Path()}
    source = tmp_path / "m.py"
    source.write_text(
        "import dicom_node.ingest\ndef later():\n    from core.lifecycle import claim\n",
        encoding="utf-8",
    )
    assert _imports(source, modules) == {"dicom_node.ingest", "core.lifecycle"}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert len(_graph()) > 100
