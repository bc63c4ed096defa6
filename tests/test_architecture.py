"""The package's shape: its folders are layers and imports run one way, down the layers (no
import from a lower layer into a higher one, nor sideways between the parts of one layer, and no
module imports one that imports it back, at any distance), the core never imports Qt or napari,
and ``_qt/`` is the napari layer. Every check reads the real import graph: each import statement
of each module (function-level ones included: they run too), parsed with ``ast``. And the size
rules: short functions, and modules that are split when they hold two concepts."""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "napari_patchdiff"
GUI_MODULES = ("napari_patchdiff._qt", "napari_patchdiff.gui")

#: The layers, lowest first: a module may import its own part, and the parts of LOWER layers,
#: nothing else. A part is a folder of napari_patchdiff/ or a module at its top ("__init__" is
#: the package's own __init__.py, which holds the version). The parts of one layer are
#: independent of each other (io never imports operators, nor cli _qt).
LAYERS: list[dict[str, set[str]]] = [
    # the vocabulary every layer shares: no import of anything above it
    {"vocabulary": {"__init__", "errors", "events", "params", "registry", "conventions",
                    "devices"}},
    # reading and writing files; the forward operators and their linear algebra
    {"io": {"io"}, "operators": {"operators"}},
    # the networks, patches and checkpoints of a prior
    {"priors": {"priors"}},
    # the methods (classical and diffusion samplers), their tuned values, the noise source
    {"solvers": {"solvers"}},
    # a problem and the runs that solve it; training a prior
    {"recon": {"recon"}, "training": {"training"}},
    # ensembles of runs, their summaries and calibration
    {"uncertainty": {"uncertainty"}},
    # the Python API; the GUI's Qt-free jobs and per-viewer state
    {"api": {"api"}, "plugin": {"plugin"}},
    # what users run: the command line (and the demo), the napari plugin (and its scripting
    # face gui.py), and the old import paths kept as re-exports (which nothing here imports)
    {"cli": {"cli", "demo"}, "qt": {"_qt", "gui"}, "compat": {"samples", "executors"}},
]


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


def _part(module: str) -> str:
    """The folder or top-level module of napari_patchdiff that holds ``module``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _placement() -> dict[str, tuple[int, str]]:
    """part -> (layer index, group name)."""
    out = {}
    for level, groups in enumerate(LAYERS):
        for group, parts in groups.items():
            for part in parts:
                assert part not in out, f"{part} is in two layers"
                out[part] = (level, group)
    return out


def test_every_module_has_a_layer():
    """A new folder or top-level module must be placed in LAYERS (and every entry there
    exists), so that the rule below covers the whole package."""
    placement = _placement()
    parts = {_part(_module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert parts - set(placement) == set(), "place these in LAYERS"
    assert set(placement) - parts == set(), "LAYERS names parts that do not exist"


def test_imports_go_down_the_layers():
    placement = _placement()
    bad = []
    for name, targets in _graph().items():
        level, group = placement[_part(name)]
        for target in targets:
            t_level, t_group = placement[_part(target)]
            if t_group == group or t_level < level:
                continue
            where = "a higher layer" if t_level > level else "another part of its layer"
            bad.append(f"{name} ({group}) imports {target} ({t_group}): {where}")
    assert not bad, "\n".join(sorted(bad))


def test_the_layer_rule_is_not_vacuous():
    """The graph the rule reads sees relative, absolute and function-level imports across
    layers (a wrong parse would pass every rule above)."""
    graph = _graph()
    assert "napari_patchdiff.recon.runs" in graph["napari_patchdiff.uncertainty.ensemble"]
    assert "napari_patchdiff.io.files" in graph["napari_patchdiff.priors.checkpoint"]
    assert "napari_patchdiff.plugin.jobs" in graph["napari_patchdiff._qt.reconstruct_widget"]
    # function-level: problem.load_truth imports the samples only for "sample:ct"
    assert "napari_patchdiff.io.samples" in graph["napari_patchdiff.recon.problem"]
    placement = _placement()
    assert placement["io"][0] < placement["solvers"][0] < placement["recon"][0] \
        < placement["uncertainty"][0] < placement["api"][0] < placement["cli"][0]


def test_the_old_import_paths_are_only_re_exports():
    """napari_patchdiff.samples and .executors (documented paths before the layers) re-export
    their module's public names, and nothing in the package imports them."""
    import importlib

    for old, new in (("samples", "io.samples"), ("executors", "recon.executors")):
        shim = importlib.import_module(f"napari_patchdiff.{old}")
        module = importlib.import_module(f"napari_patchdiff.{new}")
        public = set(getattr(module, "__all__", ())) | {
            n for n, v in vars(module).items()
            if not n.startswith("_") and getattr(v, "__module__", None) == module.__name__}
        assert public <= set(shim.__all__), (old, public - set(shim.__all__))
        assert all(getattr(shim, n) is getattr(module, n) for n in shim.__all__), old
    users = {name for name, targets in _graph().items()
             if targets & {"napari_patchdiff.samples", "napari_patchdiff.executors"}}
    assert users == set()


def test_every_package_folder_ships():
    """Each folder of the package is in pyproject's package list (a layer left out would be
    missing from the wheel, though the editable install finds it)."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(data["tool"]["setuptools"]["packages"])
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")}
    assert folders - listed == set()


def _import_statements(path: Path, package: list[str] | None):
    """(line, absolute module, names) of each import statement of ``path`` that names
    napari_patchdiff; ``package``: the dotted parts of the file's package (None outside it)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "napari_patchdiff":
                    yield node.lineno, a.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] == "napari_patchdiff":
                yield node.lineno, mod, [a.name for a in node.names]


def test_every_import_of_the_package_names_a_module_that_exists():
    """Each ``import``/``from`` of napari_patchdiff, in the package (function-level ones
    included, which importing a module does not run), the tests, scripts and benchmarks, names
    a module or package that exists, and each name it takes is a submodule or is defined,
    imported or re-exported at the top of that module: a module moved to another layer leaves
    no import of its old place behind."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    top_names = {}
    for name, path in modules.items():
        names = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names.update(n.id for t in targets for n in ast.walk(t)
                             if isinstance(n, ast.Name))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, (ast.For, ast.If, ast.Try, ast.With)):
                names.update(n.id for n in ast.walk(node)
                             if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store))
        top_names[name] = names
    files = [(p, _module_name(p)) for p in PACKAGE.rglob("*.py")]
    files += [(p, None) for folder in ("tests", "scripts", "benchmarks")
              for p in (ROOT / folder).glob("*.py")]
    bad = []
    for path, name in files:
        package = None
        if name is not None:
            package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for line, mod, names in _import_statements(path, package):
            where = f"{path.relative_to(ROOT)}:{line}"
            if mod not in modules:
                bad.append(f"{where}: no module {mod}")
                continue
            for n in names:
                if n != "*" and f"{mod}.{n}" not in modules and n not in top_names[mod]:
                    bad.append(f"{where}: {mod} has no {n}")
    assert not bad, "\n".join(bad)


#: the size rules (issue 33): no function longer than this, its docstring not counted ...
MAX_FUNCTION_LINES = 60
#: ... and no module longer than this unless its docstring says why it is one concept, in a
#: paragraph that starts with ONE_CONCEPT
MAX_MODULE_LINES = 400
ONE_CONCEPT = "Kept as one module:"


def _long_functions(path: Path) -> list[str]:
    """``path:line name (n lines)`` for each function or method of ``path`` (nested ones
    included, and counted in the function around them too) longer than MAX_FUNCTION_LINES,
    from its ``def`` line to its last, less its docstring."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        length = node.end_lineno - node.lineno + 1
        first = node.body[0]
        if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)):
            length -= first.end_lineno - first.lineno + 1
        if length > MAX_FUNCTION_LINES:
            out.append(f"{path}:{node.lineno} {node.name} ({length} lines)")
    return out


def _long_modules_without_a_reason(package: Path) -> list[str]:
    out = []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        doc = ast.get_docstring(ast.parse(text)) or ""
        if lines > MAX_MODULE_LINES and ONE_CONCEPT not in doc:
            out.append(f"{path} ({lines} lines)")
    return out


def test_functions_are_short():
    """No function of the package is longer than MAX_FUNCTION_LINES (its docstring aside): a
    longer one is several steps that want names (a widget's __init__: its _build_* methods)."""
    bad = [f for path in sorted(PACKAGE.rglob("*.py")) for f in _long_functions(path)]
    assert not bad, "split these into named steps:\n" + "\n".join(bad)


def test_long_modules_say_why_they_are_one_concept():
    """A module longer than MAX_MODULE_LINES is split where it holds two concepts; one that
    is a single concept says so, and why, in a paragraph of its docstring that starts with
    ONE_CONCEPT ("Kept as one module: ...")."""
    bad = _long_modules_without_a_reason(PACKAGE)
    assert not bad, (f"split these, or say why each is one concept in its docstring "
                     f"({ONE_CONCEPT!r}):\n" + "\n".join(bad))


def test_the_size_rules_catch_what_they_describe(tmp_path):
    """The checks above see a long function (docstring aside) and a long module without the
    paragraph, and let the same module pass with it."""
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES - 1))  # + its def
    doc = '    """A docstring\n    of lines\n    that do not count."""\n'
    (tmp_path / "short.py").write_text(f"def f():\n{doc}{body}\n")
    (tmp_path / "long.py").write_text(f"def f():\n{doc}{body}\n    return x0\n")
    assert _long_functions(tmp_path / "short.py") == []
    assert len(_long_functions(tmp_path / "long.py")) == 1
    filler = "\n" * MAX_MODULE_LINES
    (tmp_path / "long.py").write_text(f'"""A module."""\n{filler}')
    (tmp_path / "short.py").write_text(f'"""A module.\n\n{ONE_CONCEPT} one idea."""\n{filler}')
    assert _long_modules_without_a_reason(tmp_path) == [f"{tmp_path / 'long.py'} "
                                                        f"({MAX_MODULE_LINES + 1} lines)"]
