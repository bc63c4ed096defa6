"""What the diffusion samplers share: their common parameters, the noise source and prior
set-up, the first iterate and the denoiser call."""
from __future__ import annotations

from typing import Callable

import torch

from ...errors import InputError
from ...events import CancelToken
from ...operators.linalg import fixed_norm
from ...params import SEED, Param
from ...priors.sampling import edm_sigmas
from ..noise_source import NoiseSource, as_noise_source
from ..tv import gradient_z, gradient_z_adjoint, laplacian_z, shrink

__all__ = ["OBJECTS", "SEED", "SIGMA_MAX", "SIGMA_MIN", "STARTS", "Z_WEIGHT", "Z_TV",
           "Z_TV_ITERATIONS", "Z_TV_STEP", "Z_REFERENCE_MM", "ZTotalVariation",
           "check_budget", "check_cancel", "denoise", "edm_sigmas", "first_iterate",
           "grad_residual", "setup", "z_coupling", "z_total_variation", "z_tv", "z_tv_denoised",
           "z_tv_prox", "z_weight", "volume_depth"]

#: keyword arguments of every sampler that are objects, not parameters (``volume``: the batch's
#: slices form volumes of ``volume.depth`` slices, see :class:`~napari_patchdiff.solvers.Volume`)
OBJECTS = ("prior", "noise_source", "volume")
SIGMA_MAX = Param("sigma_max", float, 10.0, "largest noise level of the EDM schedule (images in "
                  "[0, 1])", low=0, open_low=True)
SIGMA_MIN = Param("sigma_min", float, 0.002, "smallest nonzero noise level", low=0, open_low=True)
Z_WEIGHT = Param("z_weight", float, None, "smoothness along z coupling the slices of a volume, "
                 "relative to the data term (0: slice by slice; default: tuned, scaled by the "
                 "slice spacing)", low=0)
Z_TV = Param("z_tv", float, None, "total variation along z coupling the slices of a volume "
             "(edge-preserving; dds, pnp-admm: see z_tv_step; dps, padis, langevin: the exact "
             "proximal map of z_tv ||D_z x||_1 on each step's denoised estimate; 0: none; "
             "default: tuned, scaled by the slice spacing)", low=0)
#: how ``z_tv`` enters a sampling step (:class:`ZTotalVariation`)
Z_TV_STEPS = ("admm", "prox")
Z_TV_STEP = Param("z_tv_step", str, None, "how z_tv enters each step: 'admm', ADMM inside a "
                  "data step that couples the slices; 'prox', the slice-by-slice data step "
                  "followed by the exact proximal map of z_tv ||D_z x||_1 (default: tuned)",
                  Z_TV_STEPS)
Z_TV_ITERATIONS = Param("z_tv_iterations", int, 1, "ADMM iterations of the z-TV term per "
                        "sampling step, each a data-step solve (more: closer to the z-TV "
                        "solution at that step; z_tv_step 'admm' only)", low=1)
#: the slice spacing (mm) the tuned z weights refer to; other spacings scale them by
#: ``(Z_REFERENCE_MM / spacing)^2`` (a finite difference along z shrinks with the spacing)
Z_REFERENCE_MM = 5.0
#: FISTA steps of :func:`z_tv_prox` (relative error of the map below 1e-3 on volumes of up to
#: ~20 slices; ``tests/test_volumes.py``)
Z_TV_PROX_ITERATIONS = 100
STARTS = ("noise", "initial")


def setup(op, y, prior, noise_source, seed) -> tuple[NoiseSource, tuple, Callable[[], int]]:
    """``(noise source, iterate shape, evaluations used so far)`` of one run."""
    if prior is None or not hasattr(prior, "denoise"):
        raise InputError("a diffusion sampler needs prior=<a Prior object> (see load_prior)")
    noise_source = as_noise_source(noise_source, seed, op.device, op.dtype)
    start = int(getattr(prior, "nfe", 0))
    return (noise_source, (y.shape[0], 1, *op.image_shape),
            lambda: int(getattr(prior, "nfe", 0)) - start)


def check_cancel(cancel: CancelToken | None, x) -> None:
    if cancel is not None:
        cancel.check(x)


def check_budget(values: dict) -> None:
    """``nfe`` must be a whole number of levels of ``inner`` steps (PaDIS, Langevin)."""
    if values["nfe"] % values["inner"]:
        raise InputError(f"nfe ({values['nfe']}) must be a multiple of inner "
                         f"({values['inner']}): nfe / inner noise levels")


def denoise(prior, x, sigma, noise: NoiseSource):
    """``prior.denoise`` in the iterate's dtype/device, with the pair-invariant generator."""
    d = prior.denoise(x, float(sigma), generator=noise.prior_generator)
    return d.to(device=x.device, dtype=x.dtype)


def first_iterate(op, y, start: str, sigma: float, noise: NoiseSource, shape):
    """``sigma z`` (``start = 'noise'``) or ``op.initial(y) + sigma z`` (``'initial'``)."""
    z = sigma * noise.randn(shape, op.dtype, op.device)
    if start == "noise":
        return z
    with torch.no_grad():
        return op.initial(y).to(z.dtype) + z


def grad_residual(op, y, prior, x, sigma, noise):
    """``(D(x), ||y - A D(x)|| per item, grad_x sum_i ||y_i - A D(x_i)||)`` by autograd."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        d = denoise(prior, xg, sigma, noise)
        r = y - op.forward(d)
        res = fixed_norm(r, per_item=True)  # the same bits on any number of threads
        (g,) = torch.autograd.grad(res.sum(), xg)
    return d.detach(), res.detach(), g


def z_weight(ctx, tuned) -> float:
    """The default ``z_weight``: 0 for a single image, else the tuned weight at
    :data:`Z_REFERENCE_MM` scaled by ``(Z_REFERENCE_MM / spacing)^2`` (an unknown spacing is
    taken as the reference)."""
    volume = ctx.volume
    if volume is None or volume.depth < 2:
        return 0.0
    spacing = volume.spacing or Z_REFERENCE_MM
    return float(tuned["z_weight_ref"]) * (Z_REFERENCE_MM / spacing) ** 2


def z_tv(ctx, tuned) -> float:
    """The default ``z_tv``: 0 for a single image or noiseless data, else the tuned weight at
    :data:`Z_REFERENCE_MM` (``z_tv_ref``; limited-angle CT has its own, see
    :func:`~napari_patchdiff.solvers.defaults.knobs`) scaled by ``Z_REFERENCE_MM / spacing`` (a
    difference along z shrinks like the spacing, and the penalty is linear in it)."""
    volume = ctx.volume
    if volume is None or volume.depth < 2 or ctx.noise_std == 0:
        return 0.0
    spacing = volume.spacing or Z_REFERENCE_MM
    return float(tuned["z_tv_ref"]) * (Z_REFERENCE_MM / spacing)


def volume_depth(volume, batch: int) -> int:
    """Slices per volume of a batch, checked to divide the batch; 0 when the batch holds no
    volume (``volume`` None or of one slice): then its images are independent (the samples of
    one image's ensemble, say) and nothing couples them."""
    if volume is None or volume.depth < 2:
        return 0
    depth = volume.depth
    if batch % depth:
        raise InputError(f"a batch of {batch} images is not a whole number of volumes of "
                         f"{depth} slices")
    return depth


def z_tv_prox(x: torch.Tensor, weight: float, depth: int,
              iterations: int = Z_TV_PROX_ITERATIONS) -> torch.Tensor:
    """``argmin_v ||v - x||^2 / 2 + weight ||D_z v||_1``: the proximal map of total variation
    along z, for a batch of volumes of ``depth`` slices (no difference crosses two volumes).

    Solved on the dual, ``v = x - D_z^T p`` with ``|p| <= weight`` elementwise, by FISTA
    (accelerated projected gradient; step ``1/4``, since ``||D_z||^2 <= 4``) from ``p = 0``:
    ``iterations`` steps of a few elementwise passes over the volume. Each pixel's column along
    z is a one-dimensional problem of its own, so the columns are solved together."""
    if weight <= 0:
        return x
    p = q = torch.zeros_like(x)
    t = 1.0
    for _ in range(int(iterations)):
        p_next = (q + 0.25 * gradient_z(x - gradient_z_adjoint(q, depth), depth)).clamp_(
            -weight, weight)
        t_next = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0
        q = p_next + ((t - 1.0) / t_next) * (p_next - p)
        p, t = p_next, t_next
    return x - gradient_z_adjoint(p, depth)


class ZTotalVariation:
    """``weight ||D_z x||_1`` (anisotropic TV along z) in a sampler's data step, for a batch of
    volumes (slices of different volumes in the batch are not coupled), in one of two ways
    (``step``, :data:`Z_TV_STEPS`):

    - ``"admm"``: ADMM with the split ``d = D_z x`` (penalty ``rho``), ``admm_iterations``
      iterations per sampling step (one, as DiffusionMBIR does, by default) with ``d`` and the
      scaled dual ``u`` carried from step to step (at the first step ADMM starts from
      ``x = x0_hat``): each iteration is the solve of ``(I + rho D_z^T D_z + gamma A^T A) x =
      x0_hat + rho D_z^T (d - u) + gamma A^T y`` (CG from ``x0_hat``, or from the ``start`` a
      sampler gives, then from the previous iteration's ``x``), then ``d = shrink(D_z x + u,
      weight / rho)`` and ``u += D_z x - d``. The carried ``d - u`` pulls the next step's
      iterate quadratically towards the previous step's z-differences.
    - ``"prox"``: the data step slice by slice, as without the term, then the exact proximal map
      of ``weight ||D_z x||_1`` (:func:`z_tv_prox`): a split of the step's objective with no
      state carried between steps.
    """

    def __init__(self, weight: float, volume, batch: int, rho: float = 1.0,
                 admm_iterations: int = 1, step: str = "admm"):
        if step not in Z_TV_STEPS:
            raise InputError(f"z_tv_step must be one of {Z_TV_STEPS}, got {step!r}")
        self.weight, self.rho, self.step = float(weight), float(rho), step
        self.admm_iterations = int(admm_iterations)
        self.depth = volume_depth(volume, batch)
        if not self.depth:
            raise InputError("TV along z couples the slices of a volume: give volume=Volume(depth, "
                             "spacing) of at least 2 slices")
        self.d = self.u = None

    def solve(self, op, x0_hat, aty, gamma: float, iterations: int, start=None,
              weight: float | None = None, **coupling):
        """This step's data step with the term (``iterations`` CG steps per solve; CG starts at
        ``start``, default ``x0_hat``); ``weight`` replaces the TV weight from this step on."""
        if weight is not None:
            self.weight = float(weight)
        if self.step == "prox":
            x = op.solve(x0_hat, aty, gamma, iterations=iterations, start=start, **coupling)
            return z_tv_prox(x, self.weight, self.depth)
        if gamma == float("inf"):
            raise InputError("z_tv with z_tv_step 'admm' needs a finite data weight (noisy "
                             "data)")
        depth, rho = self.depth, self.rho
        if self.d is None:  # ADMM from x = x0_hat
            self.d = shrink(gradient_z(x0_hat, depth), self.weight / rho)
            self.u = torch.zeros_like(x0_hat)
        x = x0_hat if start is None else start
        for _ in range(self.admm_iterations):
            rhs = x0_hat + rho * gradient_z_adjoint(self.d - self.u, depth)
            x = op.solve(rhs, aty, gamma, iterations=iterations, start=x,
                         penalty=lambda v: v + rho * laplacian_z(v, depth),
                         **{**coupling, "per_item": False})
            g = gradient_z(x, depth)
            self.d = shrink(g + self.u, self.weight / rho)
            self.u = self.u + g - self.d
        return x


def z_total_variation(weight: float, volume, batch: int, **options) -> ZTotalVariation | None:
    """The :class:`ZTotalVariation` of a sampler's data step (``options``: its ``step``,
    ``admm_iterations``), or None when ``weight`` is 0 or the batch holds no volume."""
    if weight <= 0 or not volume_depth(volume, batch):
        return None
    return ZTotalVariation(weight, volume, batch, **options)


def z_tv_denoised(weight: float, volume, batch: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """What a sampler without a data step (DPS, PaDIS, Langevin) does to each step's denoised
    estimate ``D(x)`` of a batch of volumes to couple their slices: the proximal map of
    ``weight ||D_z .||_1`` (:func:`z_tv_prox`), as DDS's ``z_tv_step = 'prox'`` does after its
    data step; the identity when ``weight`` is 0 or the batch holds no volume. The sampler's data
    gradient stays that of the network's own estimate."""
    depth = volume_depth(volume, batch)
    if weight <= 0 or not depth:
        return lambda d: d
    return lambda d: z_tv_prox(d, weight, depth)


def z_coupling(op, weight: float, volume, batch: int) -> dict:
    """The ``op.solve`` arguments that couple the slices of the batch's volumes by
    ``weight ||A^T A|| ||D_z x||^2`` (none when ``weight`` is 0 or the batch holds no volume)."""
    depth = volume_depth(volume, batch)
    if weight <= 0 or not depth:
        return {}
    scale = weight * op.norm()
    return {"coupling": lambda v: scale * laplacian_z(v, depth), "per_item": False}
