"""Annealed Langevin dynamics on the posterior (Song & Ermon 2019 with the Gaussian likelihood of
Jalal et al. 2021): 1000 network evaluations, no backpropagation, calibrated in the limit."""
from __future__ import annotations

import math

import torch

from ...events import StepEvent
from ...params import Param
from ..method import Method, register
from .common import (OBJECTS, SEED, SIGMA_MAX, SIGMA_MIN, Z_TV, check_budget,
                     check_cancel, denoise, edm_sigmas, first_iterate, setup, z_tv,
                     z_tv_denoised)


def _langevin(op, y, *, prior, nfe, inner, epsilon, data_std, z_tv, sigma_max, sigma_min, seed,
              noise_source=None, volume=None, cancel=None):
    """At each of the ``nfe / inner`` levels ``s`` of the EDM schedule, ``inner`` steps of

    ``x <- x + alpha score + sqrt(2 alpha) z``, ``score = (D(x, s) - x) / s^2 + A^T (y - A x) /
    (data_std^2 + s^2)``, ``alpha = epsilon / (1 / s^2 + L / (data_std^2 + s^2))``

    with ``L = ||A^T A||``: the step is ``epsilon`` times the inverse of a bound on the score's
    Lipschitz constant, so ``epsilon < 1`` is stable at every level. It uses the true likelihood,
    so with an exact prior and enough steps at a small ``sigma_min`` it samples the posterior
    (tested on a Gaussian model). For a volume with ``z_tv > 0``, ``D`` is replaced by the
    proximal map of ``z_tv ||D_z x||_1`` (:func:`~.common.z_tv_denoised`), which gives up that
    limit (the prior is then no longer the network's). The last estimate is ``D(x, sigma_min)``.
    ``info``: ``sigma``, ``level``.
    """
    noise, shape, used = setup(op, y, prior, noise_source, seed)
    levels, lip = nfe // inner, op.norm()
    sigmas = edm_sigmas(levels, sigma_min, sigma_max).tolist()[:levels]
    aty = op.adjoint(y)
    couple = z_tv_denoised(z_tv, volume, shape[0])
    x = first_iterate(op, y, "noise", sigma_max, noise, shape)
    for step in range(nfe):
        j = step // inner
        s = sigmas[j]
        w = 1.0 / (data_std**2 + s * s)
        alpha = epsilon / (1.0 / (s * s) + lip * w)
        check_cancel(cancel, x)
        with torch.no_grad():
            d = couple(denoise(prior, x, s, noise))
            score = (d - x) / (s * s) + w * (aty - op.normal(x))
            z = noise.randn(shape, op.dtype, op.device)
            x = x + alpha * score + math.sqrt(2.0 * alpha) * z
        yield StepEvent(step + 1, nfe, d if step + 1 == nfe else x, d, nfe=used(),
                        info={"sigma": s, "level": j + 1})


langevin = register(Method(
    "langevin", _langevin, (
        Param("nfe", int, 1000, "network evaluations", low=1),
        Param("inner", int, 10, "Langevin steps per noise level (nfe / inner levels)", low=1),
        Param("epsilon", float, 0.5, "step relative to the score's Lipschitz bound (< 1)", low=0,
              open_low=True),
        Param("data_std", float, None, "noise std the likelihood assumes (default: the noise, at "
              "least 1e-3)", low=0, open_low=True),
        Z_TV, SIGMA_MAX, SIGMA_MIN, SEED,
    ), rule=lambda ctx, values, tuned: {"data_std": max(ctx.noise_std, 1e-3),
                                        "z_tv": z_tv(ctx, tuned)},
    knobs=("z_tv_ref",), objects=OBJECTS, kind="diffusion", sampler=True, check=check_budget,
    doc="annealed Langevin with the Gaussian likelihood (calibrated in the limit; 1000 "
        "evaluations)"))
