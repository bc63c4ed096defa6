"""Decomposed diffusion sampling (DDS; Chung, Lee, Ye, ICLR 2024): 50 network evaluations, a
data-consistency solve per step, no backpropagation."""
from __future__ import annotations

import math

import torch

from ...events import StepEvent
from ...params import Param
from ..method import Method, register
from .common import (OBJECTS, SEED, SIGMA_MAX, SIGMA_MIN, STARTS, Z_TV, Z_TV_ITERATIONS,
                     Z_TV_STEP, Z_WEIGHT, check_cancel, edm_sigmas, first_iterate, setup,
                     volume_depth, z_coupling, z_total_variation, z_tv, z_weight)
from .planes import PLANES, denoise_planes, planes_rule


def _dds(op, y, *, prior, nfe, eta, cg_iterations, gamma, anneal_sigma, z_weight, z_tv,
         z_tv_step, z_tv_iterations, start, sigma_max, sigma_min, planes, seed,
         noise_source=None, volume=None, cancel=None):
    """With ``sigma_0 > ... > sigma_{nfe-1}`` the EDM (rho = 7) schedule from ``sigma_max`` to
    ``sigma_min`` and ``sigma_nfe = 0``, start at ``x = sigma_max z`` (``start = 'initial'``:
    ``op.initial(y) + sigma_max z``, the "come closer, diffuse faster" warm start that lets a
    small ``sigma_max`` skip the levels where a patch prior knows least) and per step:

    1. Tweedie ``x0_hat = D(x, sigma_i)``;
    2. ``x0' = op.solve(x0_hat, A^T y, gamma)``: ``cg_iterations`` CG steps from ``x0_hat`` on
       ``(I + gamma A^T A) x = x0_hat + gamma A^T y`` (``gamma = inf``: ``A^T A x = A^T y``);
       early stopping keeps ``x0'`` near the prior's estimate; 0: the exact solve; with
       ``anneal_sigma > 0`` the weight shrinks to ``gamma (sigma_i / anneal_sigma)^2`` below
       that level (the denoiser's error falls below the data's noise: the posterior weight);
       for a volume, ``z_weight > 0`` adds ``z_weight ||A^T A|| ||D_z x||^2`` to the data term,
       coupling neighbouring slices (DDS-3D / DiffusionMBIR, quadratic); ``z_tv > 0`` adds
       ``z_tv ||D_z x||_1`` instead or as well (edge-preserving; :class:`~.common.
       ZTotalVariation`): with ``z_tv_step = 'admm'`` by ``z_tv_iterations`` ADMM iterations
       per step inside a coupled data step, with ``'prox'`` by the exact proximal map of the
       term after the slice-by-slice data step;
    3. ``x = x0' + sigma_{i+1} (eta z + sqrt(1 - eta^2) eps_hat)``, ``eps_hat = (x - x0_hat) /
       sigma_i`` (DDIM style); at the last step ``x = x0'``.

    In a volume, step 1 denoises the axial slices, or with ``planes = 'triplanar'`` the axial,
    coronal and sagittal planes in turn (:mod:`.planes`).

    With ``eta = 0`` the sampler is deterministic given the initial noise.
    """
    noise, shape, used = setup(op, y, prior, noise_source, seed)
    sigmas = edm_sigmas(nfe, sigma_min, sigma_max).tolist()
    aty = op.adjoint(y)
    couple = z_coupling(op, z_weight, volume, shape[0])
    ztv = z_total_variation(z_tv, volume, shape[0], admm_iterations=z_tv_iterations,
                            step=z_tv_step)
    depth = volume_depth(volume, shape[0])
    x = first_iterate(op, y, start, sigma_max, noise, shape)
    for i in range(nfe):
        check_cancel(cancel, x)
        s, s_next = sigmas[i], sigmas[i + 1]
        with torch.no_grad():
            x0_hat = denoise_planes(prior, x, s, noise, planes, depth, i)
            g = gamma if anneal_sigma == 0 else gamma * min(1.0, (s / anneal_sigma) ** 2)
            if g <= 0:
                x0 = x0_hat
            elif ztv is not None:
                x0 = ztv.solve(op, x0_hat, aty, g, cg_iterations, **couple)
            else:
                x0 = op.solve(x0_hat, aty, g, iterations=cg_iterations, **couple)
            if s_next > 0:
                eps_hat = (x - x0_hat) / s
                z = noise.randn(shape, op.dtype, op.device) if eta > 0 else 0.0
                x = x0 + s_next * (eta * z + math.sqrt(1.0 - eta * eta) * eps_hat)
            else:
                x = x0
        yield StepEvent(i + 1, nfe, x, x0_hat, nfe=used(), info={"sigma": s})


def _rule(ctx, values, tuned):
    """``gamma = (prior_std / noise_std)^2``: the Gaussian posterior mean when the prior's
    estimate has error std ``prior_std`` per pixel (a tuned assumption); ``inf`` (the noiseless
    formulation) for noiseless data."""
    out = {"gamma": math.inf if ctx.noise_std == 0 else (tuned["prior_std"] / ctx.noise_std) ** 2}
    out["z_weight"] = z_weight(ctx, tuned)
    out["z_tv"] = z_tv(ctx, tuned)
    out["planes"] = planes_rule(ctx)
    return out


dds = register(Method(
    "dds", _dds, (
        Param("nfe", int, 50, "network evaluations (sampling steps)", low=1),
        Param("eta", float, None, "stochasticity in [0, 1] (0: deterministic given the initial "
              "noise)", low=0, high=1),
        Param("cg_iterations", int, None, "CG steps on the data term per sampling step (0: the "
              "exact solve, in closed form for MRI, inpainting and denoising)", low=0),
        Param("gamma", float, None, "data weight of (I + gamma A^T A) x = x0_hat + gamma A^T y "
              "(default: (prior_std / noise)^2; inf, the noiseless A^T A x = A^T y, for "
              "noiseless data)", low=0, open_low=True, allow_inf=True),
        Param("anneal_sigma", float, None, "below this noise level the data weight shrinks like "
              "sigma^2 (0: a constant weight)", low=0),
        Z_WEIGHT, Z_TV, Z_TV_STEP, Z_TV_ITERATIONS,
        Param("start", str, None, "start from pure noise or from the direct reconstruction "
              "plus noise", STARTS),
        SIGMA_MAX, SIGMA_MIN, PLANES, SEED,
    ), rule=_rule, knobs=("prior_std", "z_weight_ref", "z_tv_ref"), objects=OBJECTS,
    kind="diffusion", sampler=True,
    doc="decomposed diffusion sampling: denoise, CG data step, DDIM step (50 evaluations)"))
