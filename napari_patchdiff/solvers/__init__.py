"""Reconstruction methods, by name: ``get_solver("admm-tv").run(op, y, cancel=token, **params)``.

Each registry entry is a :class:`SolverSpec`: the generator function (``run``), its user-settable
parameters (``params``, :class:`~napari_patchdiff.operators.base.Param` tuples for the CLI and the
GUI) and ``defaults(op, noise_std) -> dict``, the documented default parameter values for an
operator and a measurement noise level. A typical caller::

    spec = get_solver("admm-tv")
    params = spec.resolve(op, noise_std, lam=0.5)   # defaults, then the user's overrides
    for event in spec.run(op, y, cancel=token, **params):
        ...
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import InputError
from ..operators.base import Param
from ..registry import Registry
from . import classical, tv
from .classical import normal_norm


@dataclass(frozen=True)
class SolverSpec:
    """A registered reconstruction method.

    Attributes
    ----------
    name : registry name ("cg", "admm-tv", ...).
    run : generator ``run(op, y, *, cancel=None, **params)`` yielding ``StepEvent``s.
    params : user-settable parameters; a ``None`` default means "chosen by ``defaults``".
    defaults : ``defaults(op, noise_std, **overrides) -> dict`` of parameter values for that
        operator/noise; the caller's overrides are passed so that dependent defaults (ADMM's
        ``rho`` follows ``lam``) are computed from them.
    kind : "classical" (no network) or "diffusion" (needs a prior).
    doc : one-line description for menus and ``--help``.
    sampler : draws posterior samples (a different seed gives a different draw), so it can make
        an ensemble (:mod:`napari_patchdiff.uncertainty`); False for point estimators.
    """

    name: str
    run: Callable[..., Any]
    params: tuple[Param, ...] = ()
    defaults: Callable[..., dict] = field(default=lambda op, noise_std=0.0, **overrides: {})
    kind: str = "classical"
    doc: str = ""
    sampler: bool = False

    def resolve(self, op, noise_std: float = 0.0, **overrides) -> dict:
        """``defaults(op, noise_std)`` updated with the non-None ``overrides``, after checking
        that every override names one of ``params``."""
        known = {p.name for p in self.params}
        unknown = set(overrides) - known
        if unknown:
            raise InputError(
                f"solver {self.name!r} has no parameter(s) {sorted(unknown)}; "
                f"it takes {sorted(known) or 'none'}"
            )
        given = {k: v for k, v in overrides.items() if v is not None}
        values = dict(self.defaults(op, noise_std, **given))  # dependent defaults follow overrides
        values.update(given)
        return values


SOLVERS: Registry[SolverSpec] = Registry("solver")


def register_solver(spec: SolverSpec) -> SolverSpec:
    """Add ``spec`` to :data:`SOLVERS` under ``spec.name``."""
    return SOLVERS.register(spec.name, spec.doc)(spec)


def get_solver(name: str) -> SolverSpec:
    """The :class:`SolverSpec` registered as ``name`` (InputError listing the choices otherwise)."""
    return SOLVERS.get(name)


_CG_PARAMS = (
    Param("iterations", int, None,
          "CG iterations (early stopping regularises; default per operator and noise)"),
    Param("damping", float, 0.0, "Tikhonov damping added to A^T A"),
    Param("start", str, None, "start from zero or from the operator's direct reconstruction",
          ("zero", "initial")),
)

_ADMM_PARAMS = (
    Param("lam", float, None, "TV weight (default: scaled to the operator norm and noise level)"),
    Param("rho", float, None, "ADMM penalty (default: relative to ||A^T A||)"),
    Param("iterations", int, None, "ADMM iterations"),
    Param("cg_iterations", int, None, "CG steps per x-update (warm-started)"),
    Param("nonneg", bool, True, "constrain the image to be non-negative"),
    Param("tv3d", bool, False, "add a TV term along the slice axis (volumes)"),
    Param("lam_z", float, None, "weight of the slice-axis TV term (default: lam)"),
)

for _name, _fn, _doc in (
    ("fbp", classical.fbp, "filtered back-projection (CT)"),
    ("zero-filled", classical.zero_filled, "zero-filled inverse FFT (MRI)"),
    ("adjoint", classical.adjoint, "the adjoint A^T y (back-projection for CT)"),
    ("initial", classical.initial, "the operator's direct reconstruction (FBP, zero-filled, ...)"),
):
    register_solver(SolverSpec(_name, _fn, (), classical.initial_defaults, "classical", _doc))

register_solver(SolverSpec(
    "cg", classical.cg, _CG_PARAMS, classical.cg_defaults, "classical",
    "early-stopped conjugate gradients on the normal equations",
))
register_solver(SolverSpec(
    "admm-tv", classical.admm_tv, _ADMM_PARAMS, classical.admm_tv_defaults, "classical",
    "total-variation regularised least squares by ADMM",
))

from . import diffusion  # noqa: E402  (registers "dds", "dps", "padis" of kind "diffusion")

diffusion.register()

__all__ = ["SOLVERS", "SolverSpec", "get_solver", "register_solver", "normal_norm", "classical",
           "tv"]
