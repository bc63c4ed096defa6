"""A reconstruction method: its algorithm, its declared parameters, and where their defaults
come from. The registry :data:`SOLVERS` holds every method by name.

A method's parameters are declared once (:class:`~napari_patchdiff.params.Param`: name, type,
bounds, meaning) and :meth:`Method.resolve` checks and fills them once, in this order:

1. the values the caller gave (``None`` means "not given");
2. the per-operator tuned value of that name (:mod:`napari_patchdiff.solvers.defaults`, which
   reads the data file beside the method, ``dds.toml`` beside ``dds.py``; an operator whose
   views cover less than a complete scan takes the limited-angle values);
3. the declared default;
4. for parameters declared without a default (automatic), the method's ``rule``: values that
   follow the operator norm, the noise level, a tuned knob (one of the method's declared
   ``knobs``) or another parameter (ADMM-TV's ``rho`` follows ``lam``).

Every tuned name of a method is one of its parameters or knobs: another fails its ``resolve``
(a tuning script's typo included) and ``tests/test_tuned.py``.

Calling the method runs exactly what the CLI, the API and the GUI run, with the same defaults::

    from napari_patchdiff.solvers import get_solver
    dds = get_solver("dds")                  # also napari_patchdiff.solvers.diffusion.dds
    for event in dds(op, y, noise_std=0.2, prior=prior, cancel=token):
        ...
    dds.resolve(op, 0.2)                     # the parameters that call uses

``run`` is the bare algorithm: a generator over validated parameters, with no defaults.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ..errors import InputError
from ..events import CancelToken, StepEvent
from ..params import NOISE_STD, Param
from ..registry import Registry
from . import defaults

__all__ = ["Method", "Context", "Volume", "SOLVERS", "register", "get_solver", "NOISE_STD"]



@dataclass(frozen=True)
class Volume:
    """What a method's defaults may know of a volume: its depth (slices), the spacing of its
    slices in mm and its pixels' (row, column) spacing in mm (None: unknown)."""

    depth: int
    spacing: float | None = None
    pixel: tuple[float, float] | None = None


@dataclass(frozen=True)
class Context:
    """What a method's ``rule`` sees: the operator, the measurement noise std and, for a volume,
    its :class:`Volume` (None for single images)."""

    op: object
    noise_std: float
    volume: Volume | None = None


@dataclass(frozen=True)
class Method:
    """A registered reconstruction method.

    Attributes
    ----------
    name : registry name ("cg", "admm-tv", "dds", ...).
    run : the algorithm, a generator ``run(op, y, *, cancel, **params, **objects)`` yielding
        :class:`~napari_patchdiff.events.StepEvent` s; ``y`` is already checked.
    params : the user-settable parameters, in the order of ``--help`` and the GUI form.
    rule : ``rule(context, values, tuned) -> dict`` of defaults that depend on the operator,
        the noise level, the volume (a :class:`Context`) or other values (``tuned``: the
        operator's tuned values of ``knobs``, and nothing else).
    objects : keyword arguments that are objects, not parameters (``prior``, ``noise_source``).
    kind : "classical" (no network) or "diffusion" (needs a prior).
    doc : one-line description for menus and ``--help``.
    sampler : draws posterior samples (a different seed gives a different draw), so it can make
        an ensemble; False for point estimators.
    check : ``check(values)`` for constraints between parameters (InputError).
    knobs : the tuned names ``rule`` reads that are not parameters (DDS's ``prior_std``, which
        sets ``gamma``): each has a value in the method's data file for every operator.
    """

    name: str
    run: Callable[..., Iterator[StepEvent]]
    params: tuple[Param, ...] = ()
    rule: Callable[..., dict] | None = None
    objects: tuple[str, ...] = ()
    kind: str = "classical"
    doc: str = ""
    sampler: bool = False
    check: Callable[[dict], None] | None = None
    knobs: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def resolve(self, op, noise_std: float = 0.0, volume: Volume | None = None,
                within: str | None = None, **given) -> dict[str, Any]:
        """The method's parameter values for ``op`` at measurement noise ``noise_std`` (and for
        a ``volume``, see :class:`Volume`): the given ones (checked), the rest filled by the
        tuned table, the rule and the declared defaults (module docstring); ``within``: the
        method these values serve, whose sub-rows of the table go over the operator's rows (the
        adaptation's values when ``"dds"`` samples). InputError for an
        unknown name or a bad value; RuntimeError for a tuned name that is neither a parameter
        nor one of ``knobs``."""
        declared = {p.name: p for p in self.params}
        unknown = sorted(set(given) - set(declared))
        if unknown:
            raise InputError(f"method {self.name!r} has no parameter(s) {unknown}; "
                             f"it takes {sorted(declared) or 'none'}")
        noise_std = NOISE_STD.check(noise_std)
        values = {k: declared[k].check(v, self.name) for k, v in given.items() if v is not None}
        tuned = defaults.knobs(op.name, self.name, getattr(op, "coverage", 1.0) < 1.0,
                               within=within)
        stray = sorted(set(tuned) - set(declared) - set(self.knobs))
        if stray:  # a data file's or a tuning script's typo: a bug, not input
            raise RuntimeError(f"method {self.name!r}: tuned value(s) for {stray}, neither "
                               f"parameters nor knobs of its rule {sorted(self.knobs)}")
        for name in declared:
            if name not in values and name in tuned:
                values[name] = tuned[name]
        for p in self.params:
            if p.name not in values and p.default is not None:
                values[p.name] = p.default
        if self.rule is not None:
            lacking = [k for k in self.knobs if k not in tuned]
            if lacking:
                raise RuntimeError(f"method {self.name!r}: no tuned value of {lacking}")
            context = Context(op, noise_std, volume)
            own = {k: tuned[k] for k in self.knobs}
            for name, value in self.rule(context, dict(values), own).items():
                values.setdefault(name, value)
        missing = [name for name in declared if values.get(name) is None]
        if missing:  # a declaration without a default, tuned value or rule: a bug, not input
            raise RuntimeError(f"method {self.name!r}: no default for {missing}")
        values = {p.name: p.check(values[p.name], self.name) for p in self.params}
        if self.check is not None:
            self.check(values)
        return values

    def __call__(self, op, y, *, noise_std: float = 0.0, cancel: CancelToken | None = None,
                 volume: Volume | None = None, **kwargs) -> Iterator[StepEvent]:
        """Run the method on ``y`` (a measurement batch for ``op``) with its resolved
        parameters; ``kwargs`` are parameters and the method's ``objects``; ``volume``: the
        batch holds volumes of that depth and spacing (their slices may be coupled; None: the
        batch's images are independent, and nothing couples them)."""
        objects = {k: kwargs.pop(k) for k in self.objects if k in kwargs}
        if volume is not None and "volume" in self.objects:
            objects["volume"] = volume
        params = self.resolve(op, noise_std, volume, **kwargs)
        return self.run(op, op.check_measurement(y), cancel=cancel, **objects, **params)


SOLVERS: Registry[Method] = Registry("method")


def register(method: Method) -> Method:
    """Add ``method`` to :data:`SOLVERS` under its name (idempotent for the same object)."""
    if method.name in SOLVERS and SOLVERS.get(method.name) is method:
        return method
    return SOLVERS.register(method.name, method.doc)(method)


def get_solver(name: str) -> Method:
    """The :class:`Method` registered as ``name`` (InputError listing the choices otherwise)."""
    return SOLVERS.get(name)
