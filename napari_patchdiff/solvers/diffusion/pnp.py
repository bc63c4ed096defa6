"""Plug-and-play ADMM (Venkatakrishnan et al. 2013) with the prior's denoiser as the proximal
step: a point estimate in 50 network evaluations, no backpropagation."""
from __future__ import annotations

import math

import torch

from ...events import StepEvent
from ...params import Param
from ..method import Method, register
from .common import (OBJECTS, SEED, Z_TV, Z_TV_STEP, Z_WEIGHT, check_cancel, setup,
                     volume_depth, z_coupling, z_total_variation, z_tv, z_weight)
from .planes import PLANES, denoise_planes, planes_rule


def _pnp_admm(op, y, *, prior, nfe, sigma_start, sigma_end, cg_iterations, data_std, z_weight,
              z_tv, z_tv_step, planes, seed, noise_source=None, volume=None, cancel=None):
    """For ``min_x ||y - A x||^2 / (2 data_std^2) + R(x)`` with the split ``x = z`` and penalty
    ``1 / sigma^2``, start at ``x = z = op.initial(y)``, ``u = 0`` and per iteration at the level
    ``sigma_k`` (geometric from ``sigma_start`` to ``sigma_end`` over ``nfe`` iterations):

    1. ``x = op.solve(z - u, A^T y, gamma)``, ``gamma = (sigma_k / data_std)^2``:
       ``cg_iterations`` CG steps warm-started at the previous ``x`` (0: exact); for a volume
       with ``z_weight > 0`` a smoothness term along z joins the data term (see DDS), with
       ``z_tv > 0`` total variation along z, by one ADMM iteration per step with its split
       variables carried over (:class:`~.common.ZTotalVariation`, as in DDS), at the weight
       ``z_tv (sigma_k / sigma_start)^2``: a fixed TV term of the objective, scaled as the
       data term is in this step;
    2. ``z = D(x + u, sigma_k)``;
    3. ``u <- u + x - z``.

    In a volume, step 2 denoises the axial slices, or with ``planes = 'triplanar'`` the axial,
    coronal and sagittal planes in turn (:mod:`.planes`).

    The MMSE denoiser of a Gaussian prior ``N(mu, S)`` at level ``sigma`` is the proximal map of
    ``R(x) = (x - mu)^T S^-1 (x - mu) / 2`` with weight ``sigma^2``, so with such a prior, a fixed
    ``sigma`` and exact data steps the iteration is ADMM on the MAP problem and converges to the
    posterior mean (tested). The estimate is ``z``; the prior's random shifts make the iteration
    stochastic unless the prior has none.
    """
    noise, shape, used = setup(op, y, prior, noise_source, seed)
    ratio = (sigma_end / sigma_start) ** (1.0 / max(nfe - 1, 1))
    aty = op.adjoint(y)
    couple = z_coupling(op, z_weight, volume, shape[0])
    ztv = z_total_variation(z_tv, volume, shape[0], step=z_tv_step)
    with torch.no_grad():
        x = op.initial(y).to(op.dtype).expand(shape).clone()
    z, u = x.clone(), torch.zeros_like(x)
    depth = volume_depth(volume, shape[0])
    for k in range(nfe):
        check_cancel(cancel, z)
        s = sigma_start * ratio**k
        with torch.no_grad():
            gamma = (s / data_std) ** 2
            if ztv is not None:
                x = ztv.solve(op, z - u, aty, gamma, cg_iterations, start=x,
                              weight=z_tv * (s / sigma_start) ** 2, **couple)
            else:
                x = op.solve(z - u, aty, gamma, iterations=cg_iterations, start=x, **couple)
            z = denoise_planes(prior, x + u, s, noise, planes, depth, k)
            u = u + x - z
        yield StepEvent(k + 1, nfe, z, z, nfe=used(), info={"sigma": s})


def _rule(ctx, values, tuned):
    """``data_std = data_scale * max(noise_std, noise_floor * sqrt(||A^T A||))``: the
    measurement noise, or for (nearly) noiseless data a floor at ``noise_floor`` on the image
    scale (measurement noise scales like ``sqrt(L)``), so the data term never dwarfs the prior
    (a floor in measurement units, 1e-3, lost 11 dB on noiseless 20-view CT)."""
    floor = tuned["noise_floor"] * math.sqrt(ctx.op.norm())
    return {"data_std": tuned["data_scale"] * max(ctx.noise_std, floor),
            "z_weight": z_weight(ctx, tuned), "z_tv": z_tv(ctx, tuned),
            "planes": planes_rule(ctx)}


pnp_admm = register(Method(
    "pnp-admm", _pnp_admm, (
        Param("nfe", int, 50, "ADMM iterations, one network evaluation each", low=1),
        Param("sigma_start", float, None, "denoiser level of the first iteration", low=0,
              open_low=True),
        Param("sigma_end", float, None, "denoiser level of the last iteration (geometric in "
              "between)", low=0, open_low=True),
        Param("cg_iterations", int, None, "CG steps on the data term per iteration (0: exact)",
              low=0),
        Param("data_std", float, None, "noise std of the data term (default: data_scale times "
              "the noise, at least a floor for noiseless data)", low=0, open_low=True),
        Z_WEIGHT, Z_TV, Z_TV_STEP, PLANES, SEED,
    ), rule=_rule, knobs=("noise_floor", "data_scale", "z_weight_ref", "z_tv_ref"),
    objects=OBJECTS, kind="diffusion",
    doc="plug-and-play ADMM with the prior's denoiser as the proximal step (50 evaluations)"))
