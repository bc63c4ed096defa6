"""The package's shape: imports run one way (no module imports one that imports it back, at
any distance), the core never imports Qt or napari, and ``_qt/`` is the napari layer."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "napari_patchdiff"
GUI_MODULES = ("napari_patchdiff._qt", "napari_patchdiff.gui")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, modules=()) -> set[str]:
    """Every module named by an import statement in ``path`` (absolute names), wherever the
    statement is (function-level imports count: they run too). ``from X import y`` names
    ``X.y`` when that is one of ``modules`` (a sibling submodule: ``from . import tv``), else
    ``X``."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                out.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod)
    return out


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imp in _imports(path, modules):
            if imp in modules and imp != name:
                targets.add(imp)
        graph[name] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    graph = _graph()
    assert len(graph) > 40 and "napari_patchdiff.api" in graph["napari_patchdiff.cli"]
    assert _cycles(graph) == []


def test_the_core_does_not_import_qt_or_napari():
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        if name.startswith(GUI_MODULES):
            continue
        bad = {i for i in _imports(path)
               if i.split(".")[0] in ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari",
                                      "superqt", "magicgui")
               or i.startswith(GUI_MODULES)}
        assert not bad, f"{name} imports {sorted(bad)}"


def test_qt_package_is_qt_code_only():
    """Every module under _qt/ is about Qt: it imports qtpy or napari (or is the package
    docstring, the npe2 reader/writer or the thread-worker glue)."""
    plain = {"napari_patchdiff._qt", "napari_patchdiff._qt.layer_io"}
    for path in (PACKAGE / "_qt").glob("*.py"):
        name = _module_name(path)
        if name in plain:
            continue
        roots = {i.split(".")[0] for i in _imports(path)}
        assert roots & {"qtpy", "napari"}, f"{name} imports neither qtpy nor napari"
