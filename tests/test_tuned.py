"""The tuned defaults (data files beside the methods, read by ``solvers/defaults.py``): every key
names a declared parameter of its method or a knob its rule declares, every table an operator,
every value a result that chose it; a rule reads exactly its declared knobs; an unknown key
fails, in a file and in a tuning script's override."""
from __future__ import annotations

import dataclasses
import re
import threading
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

from napari_patchdiff.operators import OPERATORS, make_operator
from napari_patchdiff.recon.adapt import ADAPTATION
from napari_patchdiff.solvers import SOLVERS, Volume, defaults, get_solver

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
NOTES = RESULTS / "TUNING_NOTES.md"
N = 16


def _method(name):
    return ADAPTATION if name == ADAPTATION.name else SOLVERS.get(name)


def _strays(tables) -> list[str]:
    """``"method.table.key: why"`` for each key of ``tables`` (``{method: {table: {key: _}}}``)
    that names no method, no operator, or neither a parameter nor a knob of its method."""
    out = []
    tables_ok = {defaults.FALLBACK_ROW, *defaults.GROUPS, *OPERATORS.names()}
    for method, rows in tables.items():
        if method != ADAPTATION.name and method not in SOLVERS.names():
            out.append(f"{method}: no such method")
            continue
        m = _method(method)
        names = set(m.names) | set(m.knobs)
        for table, values in rows.items():
            where, _, within = table.partition(defaults.WITHIN)
            if where not in tables_ok:
                out.append(f"{method}.{table}: no such operator or group")
            if within and (within not in SOLVERS.names() or where == defaults.FALLBACK_ROW):
                out.append(f"{method}.{table}: a sub-row names no method, or sits under the "
                           f"fallback row (read by no one)")
            for key in values:
                name = key.removesuffix(defaults.LIMITED_ANGLE)
                if name not in names:
                    out.append(f"{method}.{table}.{key}: neither a parameter nor a knob of "
                               f"{method} ({sorted(names)})")
    return out


def test_every_key_names_a_parameter_or_a_knob_and_every_table_an_operator():
    assert _strays(defaults.TABLES) == []
    for group, members in defaults.GROUPS.items():
        assert set(members) <= set(OPERATORS.names()), group


def test_an_unknown_key_fails():
    """The check above is not vacuous: a misspelt key, an unknown table or method is named."""
    bad = {"dds": {"fallback": {"prior_stdd": 0}, "ct-paralel": {"eta": 1.0},
                   "ct": {"cg_iterations_limited_angel": 5}},
           "dsd": {"fallback": {"eta": 1.0}},
           "adapt": {"ct.ddss": {"steps": 3}, "fallback.dds": {"steps": 3},
                     "ct.dds": {"stepz": 3}}}
    strays = _strays(bad)
    assert len(strays) == 7
    for word in ("prior_stdd", "ct-paralel", "cg_iterations_limited_angel", "dsd", "ct.ddss",
                 "fallback.dds", "stepz"):
        assert any(word in s for s in strays), word


def test_a_methods_sub_row_goes_over_the_operators_row_only_for_that_method():
    """``[adapt.ct.dds]`` holds the adaptation's values for CT when DDS samples: read with
    ``within="dds"`` over ``[adapt.ct]``, and by nothing else (another method, another
    operator, no ``within``)."""
    sub = defaults.row("ct-parallel", "adapt", "dds")
    assert sub and sub == defaults.row("ct-fan", "adapt", "dds")  # the group's sub-row
    plain = defaults.knobs("ct-parallel", "adapt")
    dds = defaults.knobs("ct-parallel", "adapt", within="dds")
    assert dds == {**plain, **{k: t.value for k, t in sub.items()}} and dds != plain
    assert defaults.knobs("ct-parallel", "adapt", within="pnp-admm") == plain
    assert (defaults.knobs("mri-cartesian", "adapt", within="dds")
            == defaults.knobs("mri-cartesian", "adapt"))
    assert ADAPTATION.resolve(make_operator("ct-parallel", (N, N), views=8), 0.1,
                              within="dds")["guard"] == sub["guard"].value


def test_tuned_parameter_values_pass_their_declarations_and_knobs_are_numbers():
    """A tuned parameter value is one its declaration accepts, of its type (so the snapshot of
    a resolved default is the value in the file); a knob is a number."""
    for method, rows in defaults.TABLES.items():
        m = _method(method)
        declared = {p.name: p for p in m.params}
        for table, values in rows.items():
            for key, tuned in values.items():
                name, where = key.removesuffix(defaults.LIMITED_ANGLE), f"{method}.{table}.{key}"
                if name in declared:
                    checked = declared[name].check(tuned.value, where)
                    assert checked == tuned.value and type(checked) is type(tuned.value), where
                else:
                    assert isinstance(tuned.value, (int, float)), where
                    assert not isinstance(tuned.value, bool), where


def test_every_knob_has_a_fallback_and_is_no_parameter():
    """A rule can read each of its knobs on any operator, and a knob never shadows a
    parameter."""
    for name in SOLVERS.names():
        m = get_solver(name)
        if m.knobs:
            assert m.rule is not None, name
            fallback = defaults.TABLES[name][defaults.FALLBACK_ROW]
            assert set(m.knobs) <= set(fallback), (name, set(m.knobs) - set(fallback))
            assert not set(m.knobs) & set(m.names), name
    assert ADAPTATION.knobs == () and ADAPTATION.rule is None


class _Reads(dict):
    """A dict that records the keys read from it."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)


def _operators():
    return [make_operator("ct-parallel", (N, N), views=8),
            make_operator("ct-parallel", (N, N), views=8, angular_range=90.0),
            make_operator("ct-fan", (N, N), views=8),
            *(make_operator(name, (N, N)) for name in OPERATORS.names()
              if not name.startswith("ct-"))]


def test_each_rule_reads_exactly_its_declared_knobs():
    """Over every operator, noise 0 and noise, one image and volumes, each rule reads each
    declared knob at least once (the declaration is not stale) and no other (``resolve`` hands
    a rule nothing else)."""
    ops = _operators()
    for name in SOLVERS.names():
        m = get_solver(name)
        if m.rule is None:
            assert m.knobs == (), name
            continue
        read = set()

        def recording(context, values, tuned, rule=m.rule):
            tuned = _Reads(tuned)
            out = rule(context, values, tuned)
            read.update(tuned.read)
            return out

        probe = dataclasses.replace(m, rule=recording)
        for op in ops:
            for noise in (0.0, 0.1):
                for volume in (None, Volume(4, 5.0), Volume(4, 2.5)):
                    assert probe.resolve(op, noise, volume) == m.resolve(op, noise, volume)
        assert read == set(m.knobs), (name, read ^ set(m.knobs))


def test_an_unknown_override_fails():
    """A tuning script's misspelt key fails instead of trying the default again."""
    op = make_operator("ct-parallel", (N, N), views=8)
    dds = get_solver("dds")
    with defaults.overriding(op.name, {"dds.prior_stdd": 0.05}):
        with pytest.raises(RuntimeError, match="prior_stdd"):
            dds.resolve(op, 0.1)
    for key in ("dsd.eta", "eta"):
        with pytest.raises(KeyError, match="METHOD"):
            with defaults.overriding(op.name, {key: 1.0}):
                pass
    assert dds.resolve(op, 0.1) == dds.resolve(op, 0.1)  # nothing left behind


def test_overrides_nest_end_with_their_block_and_stay_in_their_thread():
    op = make_operator("ct-parallel", (N, N), views=8)
    dds = get_solver("dds")
    shipped = dds.resolve(op, 0.1)
    seen = {}
    with defaults.overriding(op.name, {"dds.eta": 0.5}) as active:
        assert active == {op.name: {"dds.eta": 0.5}} == defaults.active_overrides()
        with defaults.overriding(op.name, {"dds.cg_iterations": 7}):
            inner = dds.resolve(op, 0.1)
            assert (inner["eta"], inner["cg_iterations"]) == (0.5, 7)
            worker = threading.Thread(target=lambda: seen.update(dds.resolve(op, 0.1)))
            worker.start()
            worker.join()
        outer = dds.resolve(op, 0.1)
        assert (outer["eta"], outer["cg_iterations"]) == (0.5, shipped["cg_iterations"])
        # the same values passed explicitly, without a block
        explicit = {op.name: {"dds.eta": 0.25}}
        assert defaults.knobs(op.name, "dds", overrides=explicit)["eta"] == 0.25
    assert seen == shipped
    assert dds.resolve(op, 0.1) == shipped and defaults.active_overrides() == {}
    assert defaults.overridden is defaults.overriding  # the former name, for older scripts


def test_every_value_cites_a_result_or_says_untuned():
    """A cite names the result file(s) in benchmarks/results/ (and a section of
    TUNING_NOTES.md that exists), or starts with 'untuned'."""
    headings = set(re.findall(r"^## (.+)$", NOTES.read_text(encoding="utf-8"), re.M))
    for method, rows in defaults.TABLES.items():
        for table, values in rows.items():
            for key, tuned in values.items():
                where, cite = f"{method}.{table}.{key}", tuned.cite
                files = re.findall(r"[\w.-]+\.(?:md|json)\b", cite)
                assert cite.startswith("untuned") or files, where
                for f in files:
                    assert (RESULTS / f).is_file(), (where, f)
                for section in re.findall(r"TUNING_NOTES\.md, ([^:;]+)", cite):
                    assert section.strip() in headings, (where, section)


def test_the_data_files_ship_with_the_package():
    """Each file of :data:`FILES` exists and matches the package data of pyproject.toml (a
    wheel without them could not resolve a default)."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    package_data = data["tool"]["setuptools"]["package-data"]
    for path in defaults.FILES:
        assert (ROOT / "napari_patchdiff" / path).is_file(), path
        folder, _, name = ("napari_patchdiff/" + path).rpartition("/")
        patterns = package_data.get(folder.replace("/", "."), [])
        assert any(fnmatch(name, p) for p in patterns), path
    assert set(defaults.SOURCES) == set(defaults.TABLES)
