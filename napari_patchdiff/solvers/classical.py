"""Classical reconstructions as step generators: direct (FBP / zero-filled / adjoint), CG, ADMM-TV.

Each method takes an operator from :mod:`napari_patchdiff.operators` and a measurement batch
``(B, 1, *op.measurement_shape)`` (complex for MRI; a volume is passed as its slices, ``B = D``),
and yields one :class:`~napari_patchdiff.events.StepEvent` per iteration with the current
estimate ``(B, 1, H, W)`` in the operator's dtype and on its device. Each step first calls
``cancel.check(estimate)`` with the estimate of the previous step, so a token set after step
``k`` raises :class:`~napari_patchdiff.events.Cancelled` carrying the step-``k`` estimate.

Defaults follow the operator and the noise level (each method's ``rule`` below, with the tuned
values of ``classical.toml`` beside this module, read by
:mod:`napari_patchdiff.solvers.defaults`); ``L = ||A^T A||`` (``op.norm()``) and
``sigma_x = noise_std / sqrt(L)``, the measurement noise on the image scale.
"""
from __future__ import annotations

import math

import torch

from ..errors import InputError
from ..events import CancelToken, StepEvent
from ..operators.linalg import cg_steps, fixed_norm, fixed_sum
from ..params import Param
from . import tv
from .method import Method, register

__all__ = ["initial", "fbp", "zero_filled", "adjoint", "cg", "admm_tv"]


def _check(cancel: CancelToken | None, estimate) -> None:
    if cancel is not None:
        cancel.check(estimate)


# ------------------------------------------------------------------------------------------------
# direct reconstructions
# ------------------------------------------------------------------------------------------------

_DIRECT = {"fbp": ("filtered back-projection, for CT operators (ct-parallel, ct-fan; FDK-type "
                   "for ct-cone)", "fbp"),
           "zero-filled": ("the zero-filled inverse FFT, for MRI (mri-cartesian)", "zero-filled")}


def _direct(kind: str):
    def run(op, y, *, cancel: CancelToken | None = None):
        if kind in _DIRECT and op.initial_name != _DIRECT[kind][1]:
            fits = op.initial_name if op.initial_name in _DIRECT else "initial"
            raise InputError(f"{kind!r} is {_DIRECT[kind][0]}; operator {op.name!r} needs "
                             f"{fits!r} (its direct reconstruction: {op.initial_name}) or "
                             f"'adjoint'")
        _check(cancel, None)
        x = op.adjoint(y) if kind == "adjoint" else op.initial(y)
        yield StepEvent(1, 1, x, info={"method": op.initial_name if kind == "initial" else kind})
    return run


fbp = register(Method("fbp", _direct("fbp"), doc="filtered back-projection (CT)"))
zero_filled = register(Method("zero-filled", _direct("zero-filled"),
                              doc="zero-filled inverse FFT (MRI)"))
adjoint = register(Method("adjoint", _direct("adjoint"),
                          doc="the adjoint A^T y (back-projection for CT)"))
initial = register(Method("initial", _direct("initial"),
                          doc="the operator's direct reconstruction (FBP, zero-filled, ...)"))


# ------------------------------------------------------------------------------------------------
# conjugate gradients
# ------------------------------------------------------------------------------------------------


def _cg_run(op, y, *, iterations, damping, start, cancel=None):
    """Early-stopped conjugate gradients on ``(A^T A + damping I) x = A^T y`` from zero or from
    the direct reconstruction; per-slice step sizes (whole-batch ones for an operator whose
    data couple the slices, ``op.couples_slices``). ``info``: ``residual`` (of the normal
    equations, over the batch) and ``relative_residual`` (divided by ``||A^T y||``)."""
    b = op.adjoint(y)
    x = op.initial(y).to(b.dtype) if start == "initial" else torch.zeros_like(b)
    b_norm = float(fixed_norm(b))

    def apply(v):
        out = op.normal(v)
        return out + damping * v if damping else out

    steps = cg_steps(apply, b, x, per_item=not op.couples_slices)
    for k in range(1, iterations + 1):
        _check(cancel, x)
        x, r = next(steps)
        res = float(fixed_norm(r))
        yield StepEvent(k, iterations, x, info={
            "residual": res, "relative_residual": res / b_norm if b_norm > 0 else 0.0})


def _cg_rule(ctx, values, t):
    """``iterations = max(2, round(n / (1 + sigma_x / noise_ref)))`` from the operator's
    noiseless count ``n`` (counts of 1 or 2, for projection-like operators, are kept): CG on the
    normal equations semi-converges on noisy data, so the more noise the earlier it stops."""
    n = t["noiseless_iterations"]
    if ctx.noise_std > 0 and n > 2:
        n = max(2, int(round(n / (1 + ctx.noise_std / math.sqrt(ctx.op.norm()) / t["noise_ref"]))))
    return {"iterations": n}


cg = register(Method(
    "cg", _cg_run, (
        Param("iterations", int, None, "CG iterations (early stopping regularises; default per "
              "operator and noise)", low=1),
        Param("damping", float, 0.0, "Tikhonov damping added to A^T A", low=0),
        Param("start", str, "initial", "start from zero or from the operator's direct "
              "reconstruction", ("zero", "initial")),
    ), rule=_cg_rule, knobs=("noiseless_iterations", "noise_ref"),
    doc="early-stopped conjugate gradients on the normal equations"))


# ------------------------------------------------------------------------------------------------
# ADMM with total variation
# ------------------------------------------------------------------------------------------------


def _admm_run(op, y, *, lam, rho, iterations, cg_iterations, nonneg, tv3d, lam_z, cancel=None):
    """ADMM for ``min_x 1/2 ||A x - y||^2 + lam TV(x) [+ lam_z ||D_z x||_1]  [s.t. x >= 0]``.

    TV is isotropic per slice (forward differences, Neumann boundary). Splits: ``z = D x`` (scaled
    dual ``u``), with ``tv3d`` also ``w = D_z x`` (difference between consecutive slices of a
    volume; dual ``v``), with ``nonneg`` also ``s = x`` projected onto ``s >= 0`` (dual ``t``).
    Per iteration: the x-update ``op.solve`` (``cg_iterations`` CG steps, warm-started) on
    ``(D^T D [+ D_z^T D_z] [+ I] + A^T A / rho) x = D^T (z - u) [+ ...] + A^T y / rho``;
    isotropic shrinkage of ``D x + u`` by ``lam / rho`` (and soft thresholding of ``D_z x + v``
    by ``lam_z / rho``, ``s = max(x + t, 0)``); scaled dual ascent. The estimate is ``s`` with
    ``nonneg``, else ``x``, starting from ``op.initial(y)``. ``info``: ``primal_residual``,
    ``dual_residual``, ``tv``.
    """
    aty = op.adjoint(y)
    x = op.initial(y).to(aty.dtype)
    if nonneg:
        x = torch.clamp(x, min=0)
    z = tv.gradient(x)
    u = torch.zeros_like(z)
    w = tv.gradient_z(x) if tv3d else None
    v = torch.zeros_like(x) if tv3d else None
    s, t = (x, torch.zeros_like(x)) if nonneg else (None, None)

    def penalty(q):
        out = tv.laplacian_like(q)
        if tv3d:
            out = out + tv.gradient_z_adjoint(tv.gradient_z(q))
        return out + q if nonneg else out

    estimate = s if nonneg else x
    for k in range(1, iterations + 1):
        _check(cancel, estimate)
        rhs = -tv.divergence(z - u)
        if tv3d:
            rhs = rhs + tv.gradient_z_adjoint(w - v)
        if nonneg:
            rhs = rhs + (s - t)
        x = op.solve(rhs, aty, 1.0 / rho, iterations=cg_iterations, start=x, penalty=penalty,
                     per_item=not tv3d)
        dx = tv.gradient(x)
        z_prev, z = z, tv.shrink_isotropic(dx + u, lam / rho)
        u = u + dx - z
        primal = float(fixed_sum((dx - z).pow(2)))
        dual = float(fixed_sum(tv.divergence(z - z_prev).pow(2)))
        if tv3d:
            dzx = tv.gradient_z(x)
            w_prev, w = w, tv.shrink(dzx + v, lam_z / rho)
            v = v + dzx - w
            primal += float(fixed_sum((dzx - w).pow(2)))
            dual += float(fixed_sum(tv.gradient_z_adjoint(w - w_prev).pow(2)))
        if nonneg:
            s_prev, s = s, torch.clamp(x + t, min=0)
            t = t + x - s
            primal += float(fixed_sum((x - s).pow(2)))
            dual += float(fixed_sum((s - s_prev).pow(2)))
        estimate = s if nonneg else x
        yield StepEvent(k, iterations, estimate, info={
            "primal_residual": math.sqrt(primal), "dual_residual": rho * math.sqrt(dual),
            "tv": float(tv.tv_norm(estimate))})


def _admm_rule(ctx, values, t):
    """With ``L = ||A^T A||`` (CT line integrals are in pixel units, so ``L ~ views * H``; MRI,
    blur, inpainting and denoising have ``L ~ 1``, super-resolution by ``f`` has ``1 / f^2``):

    * ``lam = weight * op.undersampling_factor * L * max(sigma_x, noise_floor) ** noise_power``:
      the data term scales like ``L``, so ``lam / L`` is a weight on the image scale that grows
      with the noise (quadratically for the ill-conditioned CT/deblurring/super-resolution,
      linearly for MRI/inpainting/denoising), with a floor that keeps some TV on noiseless data,
      and more weight for sparser sampling;
    * ``rho = max(rho_rel * L, rho_per_lam * lam)``: on the scale of ``A^T A`` so the x-update
      is well conditioned for every operator, and never far below ``lam``;
    * ``lam_z = lam`` (used only with ``tv3d``).

    A ``lam`` given by the caller replaces the default before ``rho`` and ``lam_z`` follow it.
    """
    op, noise_std = ctx.op, ctx.noise_std
    L = op.norm()
    lam = values.get("lam")
    if lam is None:
        sigma_x = noise_std / math.sqrt(L)
        lam = (t["weight"] * op.undersampling_factor * L
               * max(sigma_x, t["noise_floor"]) ** t["noise_power"])
    return {"lam": lam, "rho": max(t["rho_rel"] * L, t["rho_per_lam"] * lam), "lam_z": lam}


admm_tv = register(Method(
    "admm-tv", _admm_run, (
        Param("lam", float, None, "TV weight (default: scaled to the operator norm and noise "
              "level)", low=0),
        Param("rho", float, None, "ADMM penalty (default: relative to ||A^T A||)", low=0,
              open_low=True),
        Param("iterations", int, 100, "ADMM iterations", low=1),
        Param("cg_iterations", int, 5, "CG steps per x-update (warm-started)", low=1),
        Param("nonneg", bool, True, "constrain the image to be non-negative"),
        Param("tv3d", bool, False, "add a TV term along the slice axis (volumes)"),
        Param("lam_z", float, None, "weight of the slice-axis TV term (default: lam)", low=0),
    ), rule=_admm_rule, knobs=("weight", "noise_power", "noise_floor", "rho_rel", "rho_per_lam"),
    doc="total-variation regularised least squares by ADMM"))
