"""Classical reconstructions as step generators: direct (FBP / zero-filled / adjoint), CG, ADMM-TV.

Every solver is a generator ``solver(op, y, *, cancel=None, **params)`` that takes an operator from
:mod:`napari_patchdiff.operators` and a measurement batch ``(B, 1, *op.measurement_shape)`` (complex
for MRI; a volume is passed as its slices, ``B = D``), and yields one
:class:`~napari_patchdiff.events.StepEvent` per iteration with the current estimate ``(B, 1, H, W)``
in the operator's dtype and on its device. Each step first calls ``cancel.check(estimate)`` with the
estimate of the previous step, so a token set after step ``k`` raises
:class:`~napari_patchdiff.events.Cancelled` carrying the step-``k`` estimate.

Default parameters (:func:`cg_defaults`, :func:`admm_tv_defaults`) depend on the operator name and
the measurement noise level, and are read from the module-level tables :data:`CG_ITERATIONS`,
:data:`TV_WEIGHTS`, ... so that they can be re-tuned by editing one place.
"""
from __future__ import annotations

import math
import weakref
from typing import Callable, Iterator

import torch

from ..errors import InputError
from ..events import CancelToken, StepEvent
from . import tv

__all__ = [
    "initial", "fbp", "zero_filled", "adjoint", "cg", "admm_tv", "normal_norm",
    "conjugate_gradient", "cg_defaults", "admm_tv_defaults", "initial_defaults",
    "CG_ITERATIONS", "CG_NOISE_REF", "CG_START", "TV_WEIGHTS", "TV_NOISE_POWER",
    "TV_NOISE_FLOOR", "RHO_REL", "RHO_PER_LAM", "ADMM_ITERATIONS", "ADMM_CG_ITERATIONS",
]

# ------------------------------------------------------------------------------------------------
# Tunable default tables (edit these; ``defaults()`` reads them at call time)
#
# Starting values were tuned on a 64 x 64 modified Shepp-Logan phantom; the TV weights of CT, MRI,
# deblurring and super-resolution were then re-tuned on real 256 x 256 validation slices (lung2
# slice 47, brain1 slice 12: ``benchmarks/classical.py --tune``, results in
# ``benchmarks/results/tv_tuning*.md``). ``L = ||A^T A||`` (power iteration) and
# ``sigma_x = noise_std / sqrt(L)``, the measurement noise expressed on the image scale.
# ------------------------------------------------------------------------------------------------

#: CG iterations for noiseless data, per operator (early stopping is the regulariser).
#: For MRI, inpainting, denoising and super-resolution ``A^T A`` is (a multiple of) a projection,
#: so CG converges in one or two steps and more change nothing.
CG_ITERATIONS: dict[str, int] = {
    "ct-parallel": 25,
    "ct-fan": 25,
    "blur-gaussian": 60,
    "superres": 2,
    "mri-cartesian": 2,
    "inpaint": 1,
    "denoise": 1,
}

#: with noise, CG semi-converges: ``iterations = max(2, round(n / (1 + sigma_x / CG_NOISE_REF)))``
CG_NOISE_REF: float = 0.0025

#: where CG starts by default: "initial" (``op.initial(y)``: FBP, zero-filled, bicubic, ...) or
#: "zero". Starting from the direct reconstruction is never worse in the tuning runs and is what
#: lets CG improve on bicubic up-sampling (whose least-squares correction is one CG step).
CG_START: dict[str, str] = {}
_DEFAULT_CG_START = "initial"

#: relative TV weights ``w``: ``lam = w * L * max(sigma_x, TV_NOISE_FLOOR) ** TV_NOISE_POWER[op]``
TV_WEIGHTS: dict[str, float] = {
    "ct-parallel": 2.0,
    "ct-fan": 2.0,
    "mri-cartesian": 0.4,
    "blur-gaussian": 6.0,
    "superres": 0.2,
    "inpaint": 2.0,
    "denoise": 0.6,
}

#: how ``lam`` grows with the noise: ill-conditioned operators (CT, deblurring, super-resolution)
#: amplify noise at high frequencies and want ``lam ~ sigma^2`` (the MAP scaling); well-conditioned
#: ones (MRI with a sampled centre, inpainting, denoising) want ``lam ~ sigma``.
TV_NOISE_POWER: dict[str, int] = {
    "ct-parallel": 2,
    "ct-fan": 2,
    "blur-gaussian": 2,
    "superres": 2,
}

def undersampling_factor(op) -> float:
    """Extra TV weight for sparser sampling than the tuning reference of each operator.

    Sparse or limited-angle CT and stronger MRI undersampling leave more of the image to the
    regulariser. On the validation slices (``benchmarks/classical.py --tune``) the best weight
    grew like ``60 / views`` for sparse-view CT (reference: 60 views over the full range), about
    like the cube of the missing-angle ratio for limited-angle CT, and like the acceleration for
    MRI (reference 4x). Other operators: 1.
    """
    if op.name in ("ct-parallel", "ct-fan"):
        full = 180.0 if op.name == "ct-parallel" else 360.0
        coverage = min(op.params["angular_range"], full) / full
        return (60.0 / op.params["views"]) / coverage**3
    if op.name == "mri-cartesian":
        return op.params["acceleration"] / 4.0
    return 1.0


#: the image-domain noise level assumed for noiseless data (keeps a little TV for
#: under-determined problems such as sparse-view CT or undersampled MRI)
TV_NOISE_FLOOR: float = 0.005

#: ADMM penalty: ``rho = max(RHO_REL[op] * L, RHO_PER_LAM * lam)``
RHO_REL: dict[str, float] = {
    "ct-parallel": 0.002,
    "ct-fan": 0.002,
    "mri-cartesian": 0.03,
    "blur-gaussian": 0.003,
    "superres": 0.1,
    "inpaint": 0.1,
    "denoise": 0.1,
}
#: ADMM converged fastest with ``rho`` about 3-30 times ``lam`` in the tuning runs
RHO_PER_LAM: float = 10.0

#: ADMM iterations per operator (each costs ``cg_iterations`` applications of ``A^T A``)
ADMM_ITERATIONS: dict[str, int] = {}
_DEFAULT_ADMM = 100
ADMM_CG_ITERATIONS: int = 5

_DEFAULT_CG = 20
_DEFAULT_TV = 1.0
_DEFAULT_TV_POWER = 1
_DEFAULT_RHO = 0.01

# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def _dot(a: torch.Tensor, b: torch.Tensor, per_item: bool) -> torch.Tensor:
    """Inner product per batch item ``(B, 1, 1, 1)`` or over the whole batch (0-d)."""
    if per_item:
        return (a * b).sum(dim=tuple(range(1, a.ndim)), keepdim=True)
    return (a * b).sum()


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    ok = den != 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def _cg_iter(apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, x: torch.Tensor,
             per_item: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Conjugate gradients for ``apply(x) = b`` (``apply`` symmetric positive semi-definite).

    Yields ``(x, r)`` after each iteration, where ``r = b - apply(x)``. With ``per_item`` the step
    sizes are computed per batch item (valid when ``apply`` acts on each item separately);
    otherwise from whole-batch inner products (needed when ``apply`` couples the items).
    Out-of-place updates: yielded tensors are never modified afterwards.
    """
    r = b - apply(x)
    p = r
    rr = _dot(r, r, per_item)
    # an item whose residual fell to round-off level (relative to ||b||, or absolutely when b = 0)
    # stops moving: with a projection A^T A (MRI, inpainting) CG converges in one step and
    # further steps would divide round-off by round-off
    eps = torch.finfo(b.dtype).eps
    floor = (100 * eps) ** 2 * torch.clamp(_dot(b, b, per_item), min=torch.finfo(b.dtype).tiny)
    while True:
        ap = apply(p)
        pap = _dot(p, ap, per_item)
        active = (rr > floor) & (pap > 0)
        alpha = torch.where(active, _safe_div(rr, pap), torch.zeros_like(rr))
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = _dot(r, r, per_item)
        beta = torch.where(active, _safe_div(rr_new, rr), torch.zeros_like(rr))
        p = r + beta * p
        rr = rr_new
        yield x, r


def conjugate_gradient(apply, b, x0, iterations: int, per_item: bool = True) -> torch.Tensor:
    """Run ``iterations`` CG steps on ``apply(x) = b`` from ``x0`` and return ``x``."""
    x = x0
    if iterations <= 0:
        return x
    for k, (x, _) in enumerate(_cg_iter(apply, b, x0, per_item), start=1):
        if k >= iterations:
            break
    return x


_NORM_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def normal_norm(op, shape=None, iters: int = 20) -> float:
    """Estimate ``L = ||A^T A||`` (the largest eigenvalue) by power iteration.

    Starts from a fixed seeded random image ``shape`` (default ``(1, 1, H, W)``), so the result is
    deterministic; it is cached per operator instance. The Rayleigh quotient of the last iterate is
    returned (a lower bound that is accurate to a few percent after 20 iterations).
    """
    shape = tuple(shape) if shape is not None else (1, 1, *op.image_shape)
    key = (shape, int(iters))
    try:
        cached = _NORM_CACHE.setdefault(op, {})
    except TypeError:  # an operator that cannot be weakly referenced
        cached = {}
    if key in cached:
        return cached[key]
    g = torch.Generator().manual_seed(0)
    v = torch.rand(shape, generator=g, dtype=torch.float64).to(device=op.device, dtype=op.dtype)
    v = v / v.norm()
    lam = 0.0
    for _ in range(max(1, int(iters))):
        w = op.normal(v)
        lam = float((w * v).sum())
        n = float(w.norm())
        if n == 0:
            break
        v = w / n
    if not lam > 0:
        raise InputError(f"{op.name}: A^T A appears to be zero; cannot set step sizes")
    cached[key] = lam
    return lam


def _check_int(name: str, value, minimum: int) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be an integer, got {value!r}") from None
    if v != value or v < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return v


def _check_float(name: str, value, minimum: float = 0.0, strict: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < minimum or (strict and v == minimum):
        op = ">" if strict else ">="
        raise InputError(f"{name} must be a finite number {op} {minimum}, got {value!r}")
    return v


def _check_noise(noise_std) -> float:
    return _check_float("noise_std", noise_std, 0.0)


def _start(op, y, x0):
    y = op.check_measurement(y)
    if x0 is not None:
        x0 = op.check_image(x0)
        if x0.shape[0] != y.shape[0]:
            raise InputError(f"x0 has {x0.shape[0]} slices but y has {y.shape[0]}")
    return y, x0


# ------------------------------------------------------------------------------------------------
# direct reconstructions
# ------------------------------------------------------------------------------------------------

#: which direct-reconstruction name fits an operator's ``initial_name``
_INITIAL_FOR = {"fbp": "fbp", "zero-filled": "zero-filled"}


def _fitting_initial(op) -> str:
    return _INITIAL_FOR.get(op.initial_name, "initial")


def _direct(kind: str, op, y, cancel: CancelToken | None):
    y = op.check_measurement(y)
    if kind in ("fbp", "zero-filled") and op.initial_name != kind:
        what = {"fbp": "filtered back-projection, for CT operators (ct-parallel, ct-fan)",
                "zero-filled": "the zero-filled inverse FFT, for MRI (mri-cartesian)"}[kind]
        raise InputError(
            f"{kind!r} is {what}; operator {op.name!r} needs {_fitting_initial(op)!r} "
            f"(its direct reconstruction: {op.initial_name}) or 'adjoint'"
        )
    if cancel is not None:
        cancel.check(None)
    x = op.adjoint(y) if kind == "adjoint" else op.initial(y)
    yield StepEvent(1, 1, x, nfe=0, info={"method": kind if kind != "initial" else op.initial_name})


def fbp(op, y, *, cancel: CancelToken | None = None):
    """Filtered back-projection (Hann filter) of CT data, in one step."""
    yield from _direct("fbp", op, y, cancel)


def zero_filled(op, y, *, cancel: CancelToken | None = None):
    """Zero-filled MRI reconstruction (magnitude of the inverse FFT of the sampled k-space)."""
    yield from _direct("zero-filled", op, y, cancel)


def adjoint(op, y, *, cancel: CancelToken | None = None):
    """The adjoint ``A^T y`` (back-projection for CT), in one step."""
    yield from _direct("adjoint", op, y, cancel)


def initial(op, y, *, cancel: CancelToken | None = None):
    """The operator's own cheap direct reconstruction ``op.initial(y)`` (FBP, zero-filled, ...)."""
    yield from _direct("initial", op, y, cancel)


def initial_defaults(op, noise_std: float = 0.0, **overrides) -> dict:
    """The direct methods take no parameters."""
    _check_noise(noise_std)
    return {}


# ------------------------------------------------------------------------------------------------
# conjugate gradients
# ------------------------------------------------------------------------------------------------


def cg_defaults(op, noise_std: float = 0.0, **overrides) -> dict:
    """Default CG parameters for ``op`` at measurement noise std ``noise_std``.

    ``iterations = max(2, round(CG_ITERATIONS[op] / (1 + sigma_x / CG_NOISE_REF)))`` (counts of 1
    or 2, for the projection-like operators, are kept) with
    ``sigma_x = noise_std / sqrt(L)``, ``L = ||A^T A||``: CG on the normal equations
    semi-converges on noisy data, so the more noise the earlier it stops. ``start`` from
    :data:`CG_START` (default "initial"), ``damping = 0``.
    """
    noise_std = _check_noise(noise_std)
    n = CG_ITERATIONS.get(op.name, _DEFAULT_CG)
    if noise_std > 0 and n > 2:
        sigma_x = noise_std / math.sqrt(normal_norm(op))
        n = max(2, int(round(n / (1 + sigma_x / CG_NOISE_REF))))
    return {"iterations": n, "damping": 0.0, "start": CG_START.get(op.name, _DEFAULT_CG_START)}


def cg(op, y, *, iterations: int | None = None, damping: float = 0.0, start: str | None = None,
       x0=None, cancel: CancelToken | None = None):
    """Early-stopped conjugate gradients on ``(A^T A + damping I) x = A^T y``.

    Starts from ``x0`` if given, else from zero (``start="zero"``) or from the operator's direct
    reconstruction ``op.initial(y)`` (``start="initial"``); ``None`` values take
    :func:`cg_defaults` (noise 0). Each batch item (slice) has its own step sizes. ``info`` holds
    ``residual`` (norm of the normal-equation residual over the batch) and ``relative_residual``
    (divided by ``||A^T y||``).
    """
    y, x0 = _start(op, y, x0)
    if iterations is None or start is None:
        d = cg_defaults(op)
        iterations = d["iterations"] if iterations is None else iterations
        start = d["start"] if start is None else start
    iterations = _check_int("iterations", iterations, 1)
    damping = _check_float("damping", damping, 0.0)
    if start not in ("zero", "initial"):
        raise InputError(f"start must be 'zero' or 'initial', got {start!r}")
    b = op.adjoint(y)
    if x0 is not None:
        x = x0
    elif start == "initial":
        x = op.initial(y).to(b.dtype)
    else:
        x = torch.zeros_like(b)
    b_norm = float(b.norm())

    def apply(v):
        out = op.normal(v)
        return out + damping * v if damping else out

    steps = _cg_iter(apply, b, x, per_item=True)
    for k in range(1, iterations + 1):
        if cancel is not None:
            cancel.check(x)
        x, r = next(steps)
        res = float(r.norm())
        yield StepEvent(k, iterations, x, nfe=0, info={
            "residual": res, "relative_residual": res / b_norm if b_norm > 0 else 0.0})


# ------------------------------------------------------------------------------------------------
# ADMM with total variation
# ------------------------------------------------------------------------------------------------


def admm_tv_defaults(op, noise_std: float = 0.0, lam: float | None = None, **overrides) -> dict:
    """Default ADMM-TV parameters for ``op`` at measurement noise std ``noise_std``.

    With ``L = ||A^T A||`` estimated by :func:`normal_norm` (CT line integrals are in pixel units,
    so ``L ~ views * H``; MRI, blur, inpainting and denoising have ``L ~ 1``, super-resolution by
    ``f`` has ``1 / f^2``) and the measurement noise on the image scale
    ``sigma_x = noise_std / sqrt(L)``:

    * ``lam = TV_WEIGHTS[op] * undersampling_factor(op) * L * max(sigma_x, TV_NOISE_FLOOR) **
      TV_NOISE_POWER[op]``: the data
      term scales like ``L``, so ``lam / L`` is a weight on the image scale that grows with the
      noise (quadratically for the ill-conditioned CT/deblurring/super-resolution, linearly for
      MRI/inpainting/denoising), with a floor that keeps some TV on noiseless data;
    * ``rho = max(RHO_REL[op] * L, RHO_PER_LAM * lam)``: on the scale of ``A^T A`` so that the CG
      x-update on ``A^T A + rho (D^T D + I)`` is well conditioned for every operator, and never
      far below ``lam`` (ADMM converged fastest with ``rho`` ~ 3-30 ``lam``);
    * ``lam_z = lam`` (used only with ``tv3d``); ``iterations = ADMM_ITERATIONS.get(op, 100)``,
      (a ``lam`` given by the caller replaces the default before ``rho`` and ``lam_z`` follow it);
      ``cg_iterations = ADMM_CG_ITERATIONS`` (5); ``nonneg = True``, ``tv3d = False``.
    """
    noise_std = _check_noise(noise_std)
    L = normal_norm(op)
    sigma_x = noise_std / math.sqrt(L)
    power = TV_NOISE_POWER.get(op.name, _DEFAULT_TV_POWER)
    if lam is None:
        lam = (TV_WEIGHTS.get(op.name, _DEFAULT_TV) * undersampling_factor(op) * L
               * max(sigma_x, TV_NOISE_FLOOR) ** power)
    rho = max(RHO_REL.get(op.name, _DEFAULT_RHO) * L, RHO_PER_LAM * lam)
    return {
        "lam": lam,
        "rho": rho,
        "iterations": ADMM_ITERATIONS.get(op.name, _DEFAULT_ADMM),
        "cg_iterations": ADMM_CG_ITERATIONS,
        "nonneg": True,
        "tv3d": False,
        "lam_z": lam,
    }


def admm_tv(op, y, *, lam: float | None = None, rho: float | None = None,
            iterations: int | None = None, cg_iterations: int | None = None, nonneg: bool = True,
            tv3d: bool = False, lam_z: float | None = None, noise_std: float = 0.0, x0=None,
            cancel: CancelToken | None = None):
    """ADMM for ``min_x 1/2 ||A x - y||^2 + lam TV(x) [+ lam_z ||D_z x||_1]  [s.t. x >= 0]``.

    TV is isotropic per slice (forward differences, Neumann boundary). Splits: ``z = D x`` (scaled
    dual ``u``), with ``tv3d`` also ``w = D_z x`` (difference along the batch axis, i.e. between
    consecutive slices of a volume; dual ``v``), with ``nonneg`` also ``s = x`` projected onto
    ``s >= 0`` (dual ``t``). Per iteration:

    * x-update: ``cg_iterations`` CG steps, warm-started at the previous x, on
      ``(A^T A + rho (D^T D [+ D_z^T D_z] [+ I])) x = A^T y + rho (D^T (z - u) [+ D_z^T (w - v)]
      [+ s - t])`` (per-slice step sizes unless ``tv3d`` couples the slices);
    * z-update: isotropic shrinkage of ``D x + u`` by ``lam / rho``; w: soft threshold of
      ``D_z x + v`` by ``lam_z / rho``; s: ``max(x + t, 0)``;
    * scaled dual ascent ``u += D x - z`` (and ``v``, ``t`` alike).

    The estimate yielded is ``s`` (non-negative) when ``nonneg`` else ``x``; it starts from
    ``op.initial(y)`` (or ``x0``). Missing ``lam``/``rho``/... come from
    :func:`admm_tv_defaults` at ``noise_std``. ``info``: ``primal_residual`` (``||D x - z||``
    plus the other splits), ``dual_residual`` (``rho ||D^T (z - z_prev)||``), ``tv`` (the TV of
    the estimate).
    """
    y, x0 = _start(op, y, x0)
    missing = {k for k, v in dict(lam=lam, rho=rho, iterations=iterations,
                                  cg_iterations=cg_iterations).items() if v is None}
    if missing:
        d = admm_tv_defaults(op, noise_std, lam=lam)
        lam = d["lam"]
        rho = d["rho"] if rho is None else rho
        iterations = d["iterations"] if iterations is None else iterations
        cg_iterations = d["cg_iterations"] if cg_iterations is None else cg_iterations
    lam = _check_float("lam", lam, 0.0)
    lam_z = lam if lam_z is None else _check_float("lam_z", lam_z, 0.0)
    rho = _check_float("rho", rho, 0.0, strict=True)
    iterations = _check_int("iterations", iterations, 1)
    cg_iterations = _check_int("cg_iterations", cg_iterations, 1)
    nonneg, tv3d = bool(nonneg), bool(tv3d)

    aty = op.adjoint(y)
    x = op.initial(y) if x0 is None else x0
    if x.dtype != aty.dtype:
        x = x.to(aty.dtype)
    if nonneg:
        x = torch.clamp(x, min=0)
    z = tv.gradient(x)
    u = torch.zeros_like(z)
    if tv3d:
        w = tv.gradient_z(x)
        v = torch.zeros_like(w)
    if nonneg:
        s = x
        t = torch.zeros_like(x)

    def apply(q):
        out = op.normal(q) + rho * tv.laplacian_like(q)
        if tv3d:
            out = out + rho * tv.gradient_z_adjoint(tv.gradient_z(q))
        if nonneg:
            out = out + rho * q
        return out

    estimate = s if nonneg else x
    for k in range(1, iterations + 1):
        if cancel is not None:
            cancel.check(estimate)
        rhs = aty - rho * tv.divergence(z - u)
        if tv3d:
            rhs = rhs + rho * tv.gradient_z_adjoint(w - v)
        if nonneg:
            rhs = rhs + rho * (s - t)
        x = conjugate_gradient(apply, rhs, x, cg_iterations, per_item=not tv3d)

        dx = tv.gradient(x)
        z_prev = z
        z = tv.shrink_isotropic(dx + u, lam / rho)
        u = u + dx - z
        primal = float((dx - z).pow(2).sum())
        dual = float(tv.divergence(z - z_prev).pow(2).sum())
        if tv3d:
            dzx = tv.gradient_z(x)
            w_prev = w
            w = tv.shrink(dzx + v, lam_z / rho)
            v = v + dzx - w
            primal += float((dzx - w).pow(2).sum())
            dual += float(tv.gradient_z_adjoint(w - w_prev).pow(2).sum())
        if nonneg:
            s_prev = s
            s = torch.clamp(x + t, min=0)
            t = t + x - s
            primal += float((x - s).pow(2).sum())
            dual += float((s - s_prev).pow(2).sum())
        estimate = s if nonneg else x
        yield StepEvent(k, iterations, estimate, nfe=0, info={
            "primal_residual": math.sqrt(primal),
            "dual_residual": rho * math.sqrt(dual),
            "tv": float(tv.tv_norm(estimate)),
        })
