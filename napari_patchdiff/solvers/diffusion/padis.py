"""The PaDIS reference sampler (Hu, Song, Xu, Shen, Fessler, NeurIPS 2024, arXiv 2406.02462):
annealed Langevin on the patch prior with a data gradient, 1000 network evaluations, each with a
backward pass."""
from __future__ import annotations

import math

import torch

from ...events import StepEvent
from ...params import Param
from ..method import Method, register
from .common import (OBJECTS, SEED, SIGMA_MAX, Z_TV, check_budget, check_cancel,
                     edm_sigmas, first_iterate, grad_residual, setup, z_tv, z_tv_denoised)


def _padis(op, y, *, prior, nfe, inner, zeta, z_tv, sigma_max, sigma_min, seed,
           noise_source=None, volume=None, cancel=None):
    """EDM (rho = 7) schedule of ``nfe / inner`` noise levels from ``sigma_max`` to
    ``sigma_min``; start at ``x = sigma_max z``; at each level ``sigma``, ``inner`` iterations of

    * ``D = D(x, sigma)``, ``g = grad_x ||y - A D(x)||`` (the norm, not squared, per item);
    * ``x <- x - zeta g + (alpha / 2)(D - x) / sigma^2 + sqrt(alpha) z``, ``alpha = sigma^2 / 2``
      (unadjusted Langevin on the prior score at ``sigma``); no noise at the last level.

    For a volume with ``z_tv > 0``, ``D`` is first replaced by the proximal map of
    ``z_tv ||D_z x||_1`` (:func:`~.common.z_tv_denoised`). The last estimate is ``x`` itself
    (at ``sigma_min`` within ~``sigma_min`` of ``D(x)``). ``info``: ``sigma``, ``level``,
    ``residual``.
    """
    noise, shape, used = setup(op, y, prior, noise_source, seed)
    levels = nfe // inner
    sigmas = edm_sigmas(levels, sigma_min, sigma_max).tolist()[:levels]
    couple = z_tv_denoised(z_tv, volume, shape[0])
    x = first_iterate(op, y, "noise", sigma_max, noise, shape)
    for step in range(nfe):
        j = step // inner
        s, alpha = sigmas[j], sigmas[j] ** 2 / 2.0
        check_cancel(cancel, x)
        d, res, g = grad_residual(op, y, prior, x, s, noise)
        with torch.no_grad():
            d = couple(d)
            x = x - zeta * g + (alpha / 2.0) * (d - x) / (s * s)
            if j < levels - 1:
                x = x + math.sqrt(alpha) * noise.randn(shape, op.dtype, op.device)
        yield StepEvent(step + 1, nfe, x, d, nfe=used(), info={
            "sigma": s, "level": j + 1, "residual": float(torch.linalg.vector_norm(res))})


padis = register(Method(
    "padis", _padis, (
        Param("nfe", int, 1000, "network evaluations (each with a backward pass)", low=1),
        Param("inner", int, 10, "Langevin iterations per noise level (nfe / inner levels)", low=1),
        Param("zeta", float, None, "step on grad ||y - A D(x)|| (absolute)", low=0),
        Z_TV, SIGMA_MAX, Param("sigma_min", float, 0.003, "smallest nonzero noise level", low=0,
                         open_low=True), SEED,
    ), rule=lambda ctx, values, tuned: {"z_tv": z_tv(ctx, tuned)}, knobs=("z_tv_ref",),
    objects=OBJECTS, kind="diffusion", sampler=True, check=check_budget,
    doc="PaDIS reference sampler: annealed Langevin with a data gradient (1000 evaluations)"))
