"""Reconstruction methods, by name: ``get_solver("admm-tv")(op, y, noise_std=0.2, cancel=token)``.

Every method is a :class:`Method` (:mod:`.method`): the algorithm, its declared parameters and
their defaults, which come from per-operator tuned values in a data file beside each method
(``classical.toml``, ``diffusion/dds.toml``, ...), read by :mod:`.defaults`.
Classical methods (:mod:`.classical`): ``fbp``, ``zero-filled``, ``adjoint``, ``initial``,
``cg``, ``admm-tv``. Diffusion methods (:mod:`.diffusion`, need a prior): ``dds``, ``dps``,
``padis``, ``langevin`` (posterior samplers) and ``pnp-admm`` (a point estimate)::

    spec = get_solver("admm-tv")
    params = spec.resolve(op, noise_std, lam=0.5)     # the values a run uses
    for event in spec(op, y, noise_std=noise_std, cancel=token, lam=0.5):
        ...
"""
from . import classical, diffusion, tv
from .defaults import knobs
from .method import SOLVERS, Context, Method, Volume, get_solver, register

__all__ = ["SOLVERS", "Method", "Context", "Volume", "get_solver", "register", "knobs",
           "classical", "diffusion", "tv"]
