"""Diffusion posterior sampling (DPS; Chung et al., ICLR 2023) on the EDM schedule: one network
evaluation with a backward pass per step."""
from __future__ import annotations

import math

import torch

from ...events import StepEvent
from ...params import Param
from ..method import Method, register
from .common import (OBJECTS, SEED, SIGMA_MAX, SIGMA_MIN, Z_TV, check_cancel,
                     edm_sigmas, first_iterate, grad_residual, setup, z_tv, z_tv_denoised)


def _dps(op, y, *, prior, nfe, zeta, z_tv, sigma_max, sigma_min, seed, noise_source=None,
         volume=None, cancel=None):
    """Per step at ``sigma = sigma_i``: ``x0_hat = D(x, sigma)``, ``g = grad_x ||y - A x0_hat||``
    (autograd through the denoiser, per item); the ancestral step of the variance-exploding
    process ``x' = x0_hat + (s'^2 / s^2)(x - x0_hat) + s' sqrt(1 - s'^2 / s^2) z``
    (``s' = sigma_{i+1}``; at the last step ``x' = x0_hat``), then ``x' -= zeta g``. For a
    volume with ``z_tv > 0``, ``x0_hat`` is first replaced by the proximal map of
    ``z_tv ||D_z x||_1`` (:func:`~.common.z_tv_denoised`). ``info``: ``sigma``, ``residual``
    (``||y - A x0_hat||`` over the batch).
    """
    noise, shape, used = setup(op, y, prior, noise_source, seed)
    sigmas = edm_sigmas(nfe, sigma_min, sigma_max).tolist()
    couple = z_tv_denoised(z_tv, volume, shape[0])
    x = first_iterate(op, y, "noise", sigma_max, noise, shape)
    for i in range(nfe):
        check_cancel(cancel, x)
        s, s_next = sigmas[i], sigmas[i + 1]
        x0_hat, res, g = grad_residual(op, y, prior, x, s, noise)
        with torch.no_grad():
            x0_hat = couple(x0_hat)
            if s_next > 0:
                r = (s_next / s) ** 2
                z = noise.randn(shape, op.dtype, op.device)
                x = x0_hat + r * (x - x0_hat) + s_next * math.sqrt(1.0 - r) * z
            else:
                x = x0_hat
            x = x - zeta * g
        yield StepEvent(i + 1, nfe, x, x0_hat, nfe=used(),
                        info={"sigma": s, "residual": float(torch.linalg.vector_norm(res))})


def _rule(ctx, values, tuned):
    """``zeta = zeta_rel / sqrt(||A^T A||)``: the step on the gradient of the *norm*
    ``||y - A D(x)||`` is scale-free in ``y`` but scales like ``1 / sqrt(L)`` with the operator
    (DPS's normalised step does not depend on the noise)."""
    return {"zeta": tuned["zeta_rel"] / math.sqrt(ctx.op.norm()), "z_tv": z_tv(ctx, tuned)}


dps = register(Method(
    "dps", _dps, (
        Param("nfe", int, 1000, "network evaluations (each with a backward pass)", low=1),
        Param("zeta", float, None, "step on grad ||y - A D(x)||", low=0),
        Z_TV, SIGMA_MAX, SIGMA_MIN, SEED,
    ), rule=_rule, knobs=("zeta_rel", "z_tv_ref"), objects=OBJECTS, kind="diffusion",
    sampler=True,
    doc="diffusion posterior sampling: gradient of the data misfit through the denoiser"))
