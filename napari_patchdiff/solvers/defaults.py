"""Per-operator tuned defaults of every method: read from data files beside the methods, each
value with the result that chose it.

Where the values are (TOML, :data:`FILES`, relative to the package):

* ``solvers/classical.toml``: ``cg`` and ``admm-tv``;
* ``solvers/diffusion/dds.toml``, ``pnp.toml`` (``pnp-admm``), ``dps.toml``, ``padis.toml``,
  ``langevin.toml``;
* ``recon/adapt.toml``, beside ``recon/adapt.py``: the test-time adaptation (``adapt``: steps,
  every, lr, rank, discrepancy, ...).

In a file, the table ``[METHOD.fallback]`` holds the values for operators without a tuned one
and the constants of the method's rule, and ``[METHOD.OPERATOR]`` an operator's row over it
(``OPERATOR``: a registered operator name, or a group of :data:`GROUPS`: ``ct`` is both CT
geometries). A key names a parameter of the method (that parameter's default for the operator,
``eta``) or a knob of the method's rule (``Method.knobs``; ``dds``'s ``prior_std`` sets its data
weight ``gamma = (prior_std / noise_std)^2``); a key with the suffix :data:`LIMITED_ANGLE` holds
the value for views covering less than a complete scan. An operator's row may hold sub-rows for
the method that uses the values, ``[adapt.ct.dds]``: the test-time adaptation's values for CT
when DDS samples (:data:`WITHIN`; :func:`knobs`' ``within``). Each value reads
``name = {value = ..., cite = "..."}``: the result file in ``benchmarks/results/`` and its row
that chose it (``TUNING_NOTES.md`` there holds what no generated result says), or "untuned".
``tests/test_tuned.py`` checks every key against the method's parameters and knobs.

:func:`knobs` is the only reader; :func:`overriding` lets a tuning script try other values
through the same rules for the duration of a ``with`` block (``benchmarks/tune_samplers.py``).

Runs cited (all on validation slices, never on test slices): CT lung2 slice 47 (256 x 256, 20
views, noise 0.2 unless said), volumes lung2 45-49; MRI brain1 slice 12 (TV) or 15 (the MRI
prior's held-out slice), volumes brain1 13-17; TV weights by ``benchmarks/classical.py --tune``,
starting values from a 64 x 64 Shepp-Logan phantom; sampler values by
``benchmarks/tune_samplers.py`` with the shipped priors.
"""
from __future__ import annotations

import contextlib
import contextvars
import tomllib
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any, Iterator, Mapping

__all__ = ["Tuned", "TABLES", "SOURCES", "FILES", "GROUPS", "FALLBACK_ROW", "LIMITED_ANGLE",
           "WITHIN", "knobs", "row", "overriding", "overridden", "active_overrides"]

#: the data files, relative to the package: each beside the module of the methods it tunes
FILES = ("solvers/classical.toml", "solvers/diffusion/dds.toml", "solvers/diffusion/pnp.toml",
         "solvers/diffusion/dps.toml", "solvers/diffusion/padis.toml",
         "solvers/diffusion/langevin.toml", "recon/adapt.toml")
#: the table of a method's values for operators without their own, and of its rules' constants
FALLBACK_ROW = "fallback"
#: rows shared by several operators (the fan beam was never tuned on its own); an operator's own
#: row, if any, goes over its group's
GROUPS = MappingProxyType({"ct": ("ct-parallel", "ct-fan", "ct-cone")})
#: suffix of a value for views covering less than a complete scan (``z_tv_ref`` and
#: ``z_tv_ref_limited_angle``): limited-angle CT needs its own coupling and data step
LIMITED_ANGLE = "_limited_angle"
#: joins an operator's row and the method of its sub-row in :data:`TABLES`' row names: the file's
#: ``[adapt.ct.dds]`` is the row ``"ct.dds"`` of ``adapt``, read with ``within="dds"``
WITHIN = "."


@dataclass(frozen=True)
class Tuned:
    """A default value and the result that chose it (``"dds_tuning.md, CT 20 views: eta
    rows"``, or ``"untuned..."``)."""

    value: Any
    cite: str


def _row(values: Mapping[str, Mapping]) -> Mapping[str, Tuned]:
    return MappingProxyType({k: Tuned(v["value"], v["cite"]) for k, v in values.items()})


def _load() -> tuple[Mapping, Mapping]:
    """``({method: {table: {name: Tuned}}}, {method: file})`` from :data:`FILES`."""
    tables: dict[str, dict[str, dict[str, Tuned]]] = {}
    source: dict[str, str] = {}
    root = resources.files(__package__.rsplit(".", 1)[0])
    for path in FILES:
        data = tomllib.loads(root.joinpath(path).read_text(encoding="utf-8"))
        for method, rows in data.items():
            if method in source:
                raise RuntimeError(f"tuned values of {method!r} in both {source[method]} "
                                   f"and {path}")
            source[method] = path
            tables[method] = {}
            for name, r in rows.items():
                subrows = {k: v for k, v in r.items() if "value" not in v}
                tables[method][name] = _row({k: v for k, v in r.items() if k not in subrows})
                for within, sub in subrows.items():
                    tables[method][name + WITHIN + within] = _row(sub)
    return (MappingProxyType({m: MappingProxyType(t) for m, t in tables.items()}),
            MappingProxyType(source))


#: every tuned value, as read from the files (``TABLES["dds"]["ct"]["eta"].value == 1.0``), and
#: the file of each method (``SOURCES["dds"] == "solvers/diffusion/dds.toml"``)
TABLES, SOURCES = _load()

#: the overrides in force (:func:`overriding`): ``{operator: {"method.name": value}}``
_ACTIVE: contextvars.ContextVar[Mapping[str, Mapping[str, Any]]] = contextvars.ContextVar(
    "napari_patchdiff_tuned_overrides", default=MappingProxyType({}))


def row(operator: str, method: str, within: str | None = None) -> dict[str, Tuned]:
    """The values ``method`` has for ``operator`` in its file, without the fallbacks: its
    group's row, with the operator's own over it; with ``within``, their sub-rows for that
    method instead (``row("ct-parallel", "adapt", "dds")``: ``[adapt.ct.dds]``)."""
    table = TABLES.get(method, {})
    suffix = "" if within is None else WITHIN + within
    out: dict[str, Tuned] = {}
    for group, members in GROUPS.items():
        if operator in members:
            out.update(table.get(group + suffix, {}))
    out.update(table.get(operator + suffix, {}))
    return out


def active_overrides() -> Mapping[str, Mapping[str, Any]]:
    """The overrides in force here: ``{operator: {"method.name": value}}`` (empty outside an
    :func:`overriding` block)."""
    return _ACTIVE.get()


def knobs(operator: str, method: str, limited_angle: bool = False,
          overrides: Mapping[str, Mapping[str, Any]] | None = None,
          within: str | None = None) -> dict[str, Any]:
    """The tuned values of ``method`` for ``operator`` (fallbacks where the operator has none),
    by name: ``knobs("ct-parallel", "dds")["eta"] == 1.0``. ``within``: the method these values
    serve (the adaptation's ``"dds"``); the operator's sub-rows for it go over its rows.

    ``overrides`` (``{operator: {"method.name": value}}``; default: those of the enclosing
    :func:`overriding` blocks) go over the files' values. A name with the suffix
    :data:`LIMITED_ANGLE` holds the value for views covering less than a complete scan: with
    ``limited_angle`` it replaces the plain name's value of the same layer (fallbacks, then the
    operator's row, its sub-row, then the overrides, each over the last); it is never returned
    itself."""
    prefix = method + "."
    if overrides is None:
        overrides = _ACTIVE.get()
    layers = (
        {k: t.value for k, t in TABLES.get(method, {}).get(FALLBACK_ROW, {}).items()},
        {k: t.value for k, t in row(operator, method).items()},
        {} if within is None else {k: t.value for k, t in row(operator, method, within).items()},
        {k[len(prefix):]: v for k, v in overrides.get(operator, {}).items()
         if k.startswith(prefix)},
    )
    out: dict[str, Any] = {}
    for layer in layers:
        out.update({k: v for k, v in layer.items() if not k.endswith(LIMITED_ANGLE)})
        if limited_angle:
            out.update({k[:-len(LIMITED_ANGLE)]: v for k, v in layer.items()
                        if k.endswith(LIMITED_ANGLE)})
    return out


@contextlib.contextmanager
def overriding(operator: str, values: Mapping[str, Any]) -> Iterator[Mapping]:
    """Within the block, ``values`` (``{"dds.prior_std": 0.05, ...}``) replace the tuned values
    of ``operator``, over those of an enclosing block: how ``benchmarks/tune_samplers.py`` tries
    a grid through the same rules. The block's overrides hold where it was entered (this thread,
    this asyncio task), not in other threads or on Ray workers, and end with it. A key must name
    a method with tuned values (``"dds."``); a name that is neither a parameter nor a knob of
    that method fails when the method resolves its defaults (:meth:`Method.resolve`)."""
    for key in values:
        method, _, name = key.partition(".")
        if not name or method not in TABLES:
            raise KeyError(f"tuned value {key!r}: not 'METHOD.NAME' with METHOD one of "
                           f"{sorted(TABLES)}")
    current = _ACTIVE.get()
    merged = {**current, operator: MappingProxyType({**current.get(operator, {}), **values})}
    token = _ACTIVE.set(MappingProxyType(merged))
    try:
        yield _ACTIVE.get()
    finally:
        _ACTIVE.reset(token)


#: the former name of :func:`overriding`, kept for scripts written against it
overridden = overriding
