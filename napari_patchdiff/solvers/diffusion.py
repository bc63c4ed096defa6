"""Diffusion posterior samplers for any prior and any operator: DDS, DPS, PaDIS, annealed
Langevin; and PnP-ADMM with the diffusion denoiser.

Every sampler is a generator ``sampler(op, y, *, prior, ..., noise=None, seed=0, cancel=None)``
that yields one :class:`~napari_patchdiff.events.StepEvent` per network evaluation with

* ``estimate``: the current iterate ``(B, 1, H, W)`` (at the last step the reconstruction);
* ``denoised``: the prior's denoised estimate ``D(x, sigma)`` at this step;
* ``nfe``: network evaluations used by this run so far (``prior.nfe`` minus its value at start);
* ``info``: ``{'sigma': noise level of this step, ...}``.

Each step first calls ``cancel.check(x)`` with the current iterate, so a token set after step
``k`` raises :class:`~napari_patchdiff.events.Cancelled` carrying the step-``k`` estimate.

``prior`` is any object with the :class:`~napari_patchdiff.priors.prior.Prior` interface
(``prior.denoise(x, sigma, generator=None)`` and a ``prior.nfe`` counter). It is passed by the
caller as an object: it is NOT one of the registered ``params`` (the CLI/GUI load it and pass
``prior=...`` to ``spec.run``). A batch ``y`` of ``B`` measurements gives ``B`` samples; repeat
one measurement ``B`` times to draw ``B`` posterior samples of it in one batch.

All randomness (initial noise and every injected noise) is drawn from one
:class:`~napari_patchdiff.noise_source.NoiseSource` (``noise``, default
``NoiseSource(seed)``); the prior's own randomness (patch shifts) comes from
``noise.prior_generator``, which is the same in an antithetic pair.

Images are on the normalised [0, 1] scale; the noise schedules (``sigma_max = 10``) are EDM's.
MRI measurements are complex, the images (and ``A^T y``) real; the data terms use
``torch.linalg.vector_norm`` so they work for both.

Default parameters per operator and noise level (:func:`dds_defaults`, :func:`dps_defaults`,
:func:`padis_defaults`) are read from the module-level tables below; they are starting values
(DDS and PnP-ADMM on CT, PnP-ADMM on MRI tuned on validation slices by
benchmarks/tune_samplers.py; the rest are starting values).
"""
from __future__ import annotations

import math

import torch

from ..errors import InputError
from ..events import CancelToken, StepEvent
from ..noise_source import NoiseSource, as_noise_source
from ..operators.base import Param
from ..priors.sampling import edm_sigmas
from .classical import _check_float, _check_int, conjugate_gradient, normal_norm

__all__ = ["dds", "dps", "padis", "langevin", "pnp_admm", "dds_defaults", "dps_defaults",
           "padis_defaults", "langevin_defaults", "pnp_admm_defaults", "register",
           "DDS_CG_ITERATIONS", "DDS_PRIOR_STD", "DDS_ETA", "DDS_START", "DPS_ZETA", "PADIS_ZETA",
           "PNP_SIGMA_START", "PNP_SIGMA_END", "PNP_CG_ITERATIONS", "PNP_DATA_SCALE"]

# ------------------------------------------------------------------------------------------------
# Tunable default tables (starting values; ``*_defaults()`` read them at call time)
# ------------------------------------------------------------------------------------------------

#: DDS: CG steps per sampling step. ``A^T A`` is a projection for MRI/inpainting/denoising, so
#: one or two steps reach the data exactly; CT was tuned on a validation slice (dds_tuning.md,
#: 12,092-step prior, eta 1: 5 steps beat 10 by 0.2 dB and 2 by 1.2 dB); deblurring: 5 ties with
#: 10 (0.02 dB) and beats 2 by 0.8 dB; super-resolution: 2, 5 and 10 give identical results.
DDS_CG_ITERATIONS: dict[str, int] = {
    "ct-parallel": 5, "ct-fan": 5, "blur-gaussian": 5, "superres": 3,
    "mri-cartesian": 2, "inpaint": 1, "denoise": 1,
}
_DEFAULT_DDS_CG = 5
#: DDS noisy-data weighting: with noise ``noise_std > 0`` the data step solves
#: ``(I + gamma A^T A) x = x0_hat + gamma A^T y`` with ``gamma = (prior_std / noise_std)^2``,
#: i.e. the Gaussian posterior mean when the prior's estimate has error std ``prior_std`` per
#: pixel (an assumption) and the measurement noise std is ``noise_std``. CT: tuned on a
#: validation slice (benchmarks/results/dds_tuning.md, 12,092-step prior, warm start, eta 1:
#: 0.1 and 0.2 tie to 0.01 dB, 0.05 is 0.03 dB and 0.01 1.6 dB below); deblurring: 0.02 (4.1 dB
#: above 0.01, 3.4 dB above 0.1); super-resolution x4: 0.05 (tuned; 0.02-0.2 within 0.1 dB);
#: others (MRI, inpainting): the untuned starting value.
DDS_PRIOR_STD: dict[str, float] = {"ct-parallel": 0.1, "ct-fan": 0.1, "blur-gaussian": 0.02}
_DEFAULT_DDS_PRIOR_STD = 0.05
#: DDS stochasticity ``eta``. CT: tuned on a validation slice (dds_tuning.md, warm start): fresh
#: noise at every step (1.0) beat the paper's 0.15 by 4.5 dB, the deterministic 0 by 4.8 dB and
#: 0.8 by 1.0 dB; deblurring and super-resolution x4 likewise (1.0 beat 0.15 by 4.4 and 1.9 dB);
#: others: the paper's 0.15 (untuned).
DDS_ETA: dict[str, float] = {"ct-parallel": 1.0, "ct-fan": 1.0, "blur-gaussian": 1.0,
                             "superres": 1.0}
_DEFAULT_DDS_ETA = 0.15
#: DDS start ``(init, sigma_max)``. CT: tuned on a validation slice (dds_tuning.md): the warm
#: start from the FBP plus noise at sigma 0.3 beat pure noise at sigma 10 by 0.7 dB (sigma 1:
#: +0.4 dB), since the patch prior knows least at the high noise levels it then skips;
#: super-resolution x4: the bicubic image plus noise at 0.3 (0.9 dB above pure noise);
#: deblurring: pure noise (1.2 dB above the blurred image at 0.3); others: pure noise at EDM's
#: sigma_max 10.
DDS_START: dict[str, tuple[str, float]] = {"ct-parallel": ("initial", 0.3),
                                           "ct-fan": ("initial", 0.3),
                                           "superres": ("initial", 0.3)}
_DEFAULT_DDS_START = ("noise", 10.0)
#: DPS step ``zeta`` on ``grad_x ||y - A D(x)||``, relative to ``1 / sqrt(||A^T A||)``. CT:
#: tuned at 1000 evaluations on a validation slice (benchmarks/results/dps_tuning.md: 2 gave
#: 32.6 dB, 1 and 4 lost 2.8 and 0.5 dB, the untuned 0.5 lost 8 dB); others: 0.5 (untuned).
DPS_ZETA: dict[str, float] = {"ct-parallel": 2.0, "ct-fan": 2.0}
_DEFAULT_DPS_ZETA = 0.5
#: PaDIS step ``zeta`` on ``grad_x ||y - A D(x)||``, absolute (not scaled by the operator norm).
#: CT: tuned at 1000 evaluations on a validation slice (benchmarks/results/padis_tuning.md, grid
#: 0.03-3: 0.1 gave 30.6 dB, 0.03 29.3 dB, the paper's 0.3 21.4 dB); others: the paper's 0.3
#: (untuned; it is not scaled with the operator).
PADIS_ZETA: dict[str, float] = {"ct-parallel": 0.1, "ct-fan": 0.1}
_DEFAULT_PADIS_ZETA = 0.3
#: PnP-ADMM denoiser levels, annealed geometrically from start to end, CG steps per iteration
#: and the data term's noise std as a multiple of the measurement noise. CT: tuned on a
#: validation slice (benchmarks/results/pnp_tuning.md, 12,092-step prior: 35.83 dB there; 2 CG
#: steps lose 10 dB, start 0.4 or end 0.01 / 0.05 lose 0.4-0.5 dB). MRI 4x: start
#: tuned on the MRI prior's validation slice (pnp_tuning_mri.md: 0.2 ties with 0.1 and 0.4 to
#: 0.02 dB, 0.05 loses 0.8 dB; data scale 1 beats 0.5 and 2 by 0.16 dB). Others: the untuned
#: starting values (CG steps as for DDS).
PNP_SIGMA_START: dict[str, float] = {"ct-parallel": 0.1, "ct-fan": 0.1, "mri-cartesian": 0.2}
_DEFAULT_PNP_SIGMA_START = 0.1
PNP_SIGMA_END: dict[str, float] = {"ct-parallel": 0.02, "ct-fan": 0.02}
_DEFAULT_PNP_SIGMA_END = 0.02
PNP_CG_ITERATIONS: dict[str, int] = {"ct-parallel": 10, "ct-fan": 10}
PNP_DATA_SCALE: dict[str, float] = {"ct-parallel": 0.5, "ct-fan": 0.5}
_DEFAULT_PNP_DATA_SCALE = 1.0


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def _setup(op, y, prior, noise, seed, cancel):
    if prior is None or not hasattr(prior, "denoise"):
        raise InputError("a diffusion sampler needs prior=<a Prior object> (see load_prior)")
    y = op.check_measurement(y)
    noise = as_noise_source(noise, seed, op.device, op.dtype)
    shape = (y.shape[0], 1, *op.image_shape)
    return y, noise, shape, int(getattr(prior, "nfe", 0))


def _denoise(prior, x, sigma, noise: NoiseSource):
    """``prior.denoise`` in the iterate's dtype/device, with the pair-invariant generator."""
    d = prior.denoise(x, float(sigma), generator=noise.prior_generator)
    return d.to(device=x.device, dtype=x.dtype)


INITS = ("noise", "initial")


def _start(op, y, init, sigma, noise, shape):
    """The first iterate: ``sigma z`` or ``op.initial(y) + sigma z``."""
    if init not in INITS:
        raise InputError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    z = sigma * noise.randn(shape, op.dtype, op.device)
    if init == "noise":
        return z
    with torch.no_grad():
        return op.initial(y).to(z.dtype) + z


def _nfe(prior, nfe0):
    return int(getattr(prior, "nfe", 0)) - nfe0


def _residual_norm(op, y, x):
    """Per-item ``||y - A x||`` of shape (B,) (real or complex measurements)."""
    r = y - op.forward(x)
    return torch.linalg.vector_norm(r.reshape(r.shape[0], -1), dim=1)


def _grad_residual(op, y, prior, x, sigma, noise):
    """``(D(x), ||y - A D(x)|| per item, grad_x sum_i ||y_i - A D(x_i)||)`` by autograd."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        d = _denoise(prior, xg, sigma, noise)
        res = _residual_norm(op, y, d)
        (g,) = torch.autograd.grad(res.sum(), xg)
    return d.detach(), res.detach(), g


# ------------------------------------------------------------------------------------------------
# DDS
# ------------------------------------------------------------------------------------------------


def dds_defaults(op, noise_std: float = 0.0, **overrides) -> dict:
    """Default DDS parameters for ``op`` at measurement noise std ``noise_std``.

    ``nfe = 50`` (the paper's count), ``eta = DDS_ETA[op]`` (1 for CT, deblurring and
    super-resolution, tuned; else the paper's 0.15), ``cg_iterations = DDS_CG_ITERATIONS[op]`` (5
    for CT and deblurring, 1-3 for projection-like operators), ``gamma = None`` (the noiseless
    formulation ``A^T A x = A^T y``) for ``noise_std = 0``, else
    ``(DDS_PRIOR_STD[op] / noise_std)^2``, ``(init, sigma_max) = DDS_START[op]`` (CT and
    super-resolution: the direct reconstruction plus noise at sigma 0.3, tuned; else pure noise
    at 10, EDM's),
    ``sigma_min = 0.002`` (EDM), ``seed = 0``.
    """
    noise_std = _check_float("noise_std", noise_std, 0.0)
    prior_std = DDS_PRIOR_STD.get(op.name, _DEFAULT_DDS_PRIOR_STD)
    gamma = None if noise_std == 0 else (prior_std / noise_std) ** 2
    init, sigma_max = DDS_START.get(op.name, _DEFAULT_DDS_START)
    return {"nfe": 50, "eta": DDS_ETA.get(op.name, _DEFAULT_DDS_ETA),
            "cg_iterations": DDS_CG_ITERATIONS.get(op.name, _DEFAULT_DDS_CG), "gamma": gamma,
            "sigma_max": sigma_max, "sigma_min": 0.002, "init": init, "seed": 0}


def dds(op, y, *, prior, nfe: int = 50, eta: float = 0.15, cg_iterations: int = 5,
        gamma: float | None = None, sigma_max: float = 10.0, sigma_min: float = 0.002,
        init: str = "noise", noise: NoiseSource | None = None, seed: int = 0,
        cancel: CancelToken | None = None):
    """Decomposed diffusion sampling (Chung, Lee, Ye 2024), ``nfe`` network evaluations, no backprop.

    With ``sigma_0 > ... > sigma_{nfe-1}`` the EDM (rho = 7) schedule from ``sigma_max`` to
    ``sigma_min`` and ``sigma_nfe = 0``, start at ``x = sigma_max z`` and per step:

    1. Tweedie ``x0_hat = D(x, sigma_i)`` (under ``torch.no_grad``);
    2. ``x0'`` = ``cg_iterations`` CG steps started at ``x0_hat`` on the data term: the noiseless
       ``A^T A x = A^T y`` if ``gamma`` is None, else ``(I + gamma A^T A) x = x0_hat + gamma A^T y``
       (early stopping keeps ``x0'`` near the prior's estimate);
    3. ``x = x0' + sigma_{i+1} (eta z + sqrt(1 - eta^2) eps_hat)``, ``eps_hat = (x - x0_hat) /
       sigma_i`` (DDIM/EDM style); at the last step ``x = x0'``.

    ``init = 'initial'`` starts instead from the operator's direct reconstruction plus noise,
    ``x = op.initial(y) + sigma_max z`` (FBP for CT, zero-filled for MRI; the "come closer,
    diffuse faster" warm start), which lets a small ``sigma_max`` skip the levels where a patch
    prior knows least about global anatomy.

    With ``eta = 0`` the sampler is deterministic given the initial noise. ``info``:
    ``sigma``, ``residual`` (``||y - A x0'||`` over the batch).
    """
    y, noise, shape, nfe0 = _setup(op, y, prior, noise, seed, cancel)
    nfe = _check_int("nfe", nfe, 1)
    cg_iterations = _check_int("cg_iterations", cg_iterations, 0)
    eta = _check_float("eta", eta, 0.0)
    if eta > 1:
        raise InputError(f"eta must be in [0, 1], got {eta}")
    sigma_max = _check_float("sigma_max", sigma_max, 0.0, strict=True)
    sigma_min = _check_float("sigma_min", sigma_min, 0.0, strict=True)
    if gamma is not None:
        gamma = _check_float("gamma", gamma, 0.0, strict=True)
    sigmas = edm_sigmas(nfe, sigma_min, sigma_max).tolist()

    aty = op.adjoint(y)
    if gamma is None:
        def apply(v):
            return op.normal(v)
    else:
        def apply(v):
            return v + gamma * op.normal(v)

    x = _start(op, y, init, sigma_max, noise, shape)
    for i in range(nfe):
        if cancel is not None:
            cancel.check(x)
        s, s_next = sigmas[i], sigmas[i + 1]
        with torch.no_grad():
            x0_hat = _denoise(prior, x, s, noise)
            b = aty if gamma is None else x0_hat + gamma * aty
            x0 = conjugate_gradient(apply, b, x0_hat, cg_iterations)
            if s_next > 0:
                eps_hat = (x - x0_hat) / s
                z = noise.randn(shape, op.dtype, op.device) if eta > 0 else 0.0
                x = x0 + s_next * (eta * z + math.sqrt(1.0 - eta * eta) * eps_hat)
            else:
                x = x0
        res = float(torch.linalg.vector_norm(y - op.forward(x0)))
        yield StepEvent(i + 1, nfe, x, x0_hat, nfe=_nfe(prior, nfe0),
                        info={"sigma": s, "residual": res})


# ------------------------------------------------------------------------------------------------
# DPS
# ------------------------------------------------------------------------------------------------


def dps_defaults(op, noise_std: float = 0.0, **overrides) -> dict:
    """Default DPS parameters: ``nfe = 1000`` (the published count), ``zeta = DPS_ZETA[op] /
    sqrt(||A^T A||)`` (0.5 relative by default; the step on the gradient of the *norm*
    ``||y - A D(x)||`` is scale-free in ``y`` but scales like ``1 / sqrt(L)`` with the operator),
    ``sigma_max = 10``, ``sigma_min = 0.002``, ``seed = 0``. ``noise_std`` is checked but unused
    (DPS's normalised step does not depend on it)."""
    _check_float("noise_std", noise_std, 0.0)
    zeta = DPS_ZETA.get(op.name, _DEFAULT_DPS_ZETA) / math.sqrt(normal_norm(op))
    return {"nfe": 1000, "zeta": zeta, "sigma_max": 10.0, "sigma_min": 0.002, "seed": 0}


def dps(op, y, *, prior, nfe: int = 1000, zeta: float = 0.5, sigma_max: float = 10.0,
        sigma_min: float = 0.002, noise: NoiseSource | None = None, seed: int = 0,
        cancel: CancelToken | None = None):
    """Diffusion posterior sampling (Chung et al. 2023) on the EDM schedule, one network
    evaluation with a backward pass per step.

    Per step at ``sigma = sigma_i``: ``x0_hat = D(x, sigma)``, ``g = grad_x ||y - A x0_hat||``
    (autograd through the denoiser, per item); the ancestral (DDPM-like) step of the
    variance-exploding process
    ``x' = x0_hat + (s'^2 / s^2)(x - x0_hat) + s' sqrt(1 - s'^2 / s^2) z`` (``s' = sigma_{i+1}``;
    at the last step ``x' = x0_hat``), then ``x' -= zeta g``. ``info``: ``sigma``, ``residual``
    (``||y - A x0_hat||`` over the batch).
    """
    y, noise, shape, nfe0 = _setup(op, y, prior, noise, seed, cancel)
    nfe = _check_int("nfe", nfe, 1)
    zeta = _check_float("zeta", zeta, 0.0)
    sigma_max = _check_float("sigma_max", sigma_max, 0.0, strict=True)
    sigma_min = _check_float("sigma_min", sigma_min, 0.0, strict=True)
    sigmas = edm_sigmas(nfe, sigma_min, sigma_max).tolist()
    x = sigma_max * noise.randn(shape, op.dtype, op.device)
    for i in range(nfe):
        if cancel is not None:
            cancel.check(x)
        s, s_next = sigmas[i], sigmas[i + 1]
        x0_hat, res, g = _grad_residual(op, y, prior, x, s, noise)
        with torch.no_grad():
            if s_next > 0:
                r = (s_next / s) ** 2
                x = x0_hat + r * (x - x0_hat) + s_next * math.sqrt(1.0 - r) * noise.randn(shape, op.dtype, op.device)
            else:
                x = x0_hat
            x = x - zeta * g
        yield StepEvent(i + 1, nfe, x, x0_hat, nfe=_nfe(prior, nfe0),
                        info={"sigma": s, "residual": float(torch.linalg.vector_norm(res))})


# ------------------------------------------------------------------------------------------------
# PaDIS
# ------------------------------------------------------------------------------------------------


def padis_defaults(op, noise_std: float = 0.0, **overrides) -> dict:
    """Default PaDIS parameters (methods.md section 2): ``levels = 100``, ``inner = 10`` (1000
    evaluations), ``zeta = PADIS_ZETA[op]`` (0.3 by default, the paper's value),
    ``sigma_max = 10``, ``sigma_min = 0.003``, ``seed = 0``. ``noise_std`` is checked but unused."""
    _check_float("noise_std", noise_std, 0.0)
    zeta = PADIS_ZETA.get(op.name, _DEFAULT_PADIS_ZETA)
    return {"levels": 100, "inner": 10, "zeta": zeta, "sigma_max": 10.0, "sigma_min": 0.003,
            "seed": 0}


def padis(op, y, *, prior, levels: int = 100, inner: int = 10, zeta: float = 0.3,
          sigma_max: float = 10.0, sigma_min: float = 0.003, noise: NoiseSource | None = None,
          seed: int = 0, cancel: CancelToken | None = None):
    """The PaDIS reference sampler (Hu et al. 2024; methods.md section 2), ``levels * inner``
    network evaluations, each with a backward pass.

    EDM (rho = 7) schedule of ``levels`` noise levels from ``sigma_max`` to ``sigma_min``; start
    at ``x = sigma_max z``; at each level ``sigma``, ``inner`` iterations of

    * ``D = D(x, sigma)``, ``g = grad_x ||y - A D(x)||`` (the norm, not squared, per item);
    * ``x <- x - zeta g + (alpha / 2)(D - x) / sigma^2 + sqrt(alpha) z``, ``alpha = sigma^2 / 2``
      (unadjusted Langevin on the prior score at ``sigma``, evaluated at the pre-update ``x``);
      no noise at the last level.

    The estimate yielded after the last iteration is ``x`` itself (at ``sigma_min`` it is within
    ~``sigma_min`` of ``D(x)``). ``info``: ``sigma``, ``level``, ``residual``.
    """
    y, noise, shape, nfe0 = _setup(op, y, prior, noise, seed, cancel)
    levels = _check_int("levels", levels, 1)
    inner = _check_int("inner", inner, 1)
    zeta = _check_float("zeta", zeta, 0.0)
    sigma_max = _check_float("sigma_max", sigma_max, 0.0, strict=True)
    sigma_min = _check_float("sigma_min", sigma_min, 0.0, strict=True)
    sigmas = edm_sigmas(levels, sigma_min, sigma_max).tolist()[:levels]
    total = levels * inner
    x = sigma_max * noise.randn(shape, op.dtype, op.device)
    step = 0
    for j, s in enumerate(sigmas):
        alpha = s * s / 2.0
        last = j == levels - 1
        for _ in range(inner):
            if cancel is not None:
                cancel.check(x)
            d, res, g = _grad_residual(op, y, prior, x, s, noise)
            with torch.no_grad():
                x = x - zeta * g + (alpha / 2.0) * (d - x) / (s * s)
                if not last:
                    x = x + math.sqrt(alpha) * noise.randn(shape, op.dtype, op.device)
            step += 1
            yield StepEvent(step, total, x, d, nfe=_nfe(prior, nfe0),
                            info={"sigma": s, "level": j + 1,
                                  "residual": float(torch.linalg.vector_norm(res))})


# ------------------------------------------------------------------------------------------------
# Annealed Langevin with the Gaussian likelihood
# ------------------------------------------------------------------------------------------------


def langevin_defaults(op, noise_std: float = 0.0, **overrides) -> dict:
    """Default annealed-Langevin parameters: ``levels = 100``, ``inner = 10`` (1000 evaluations),
    ``epsilon = 0.5``, ``data_std = max(noise_std, 1e-3)`` (the likelihood's noise std; a floor
    keeps noiseless data finite), ``sigma_max = 10``, ``sigma_min = 0.002``, ``seed = 0``."""
    noise_std = _check_float("noise_std", noise_std, 0.0)
    return {"levels": 100, "inner": 10, "epsilon": 0.5, "data_std": max(noise_std, 1e-3),
            "sigma_max": 10.0, "sigma_min": 0.002, "seed": 0}


def langevin(op, y, *, prior, levels: int = 100, inner: int = 10, epsilon: float = 0.5,
             data_std: float = 0.01, sigma_max: float = 10.0, sigma_min: float = 0.002,
             noise: NoiseSource | None = None, seed: int = 0, cancel: CancelToken | None = None):
    """Annealed Langevin dynamics on the posterior (Song & Ermon 2019 with the Gaussian
    likelihood of Jalal et al. 2021), ``levels * inner`` network evaluations, no backpropagation.

    At each level ``s`` of the EDM schedule, ``inner`` steps of

    ``x <- x + alpha (score) + sqrt(2 alpha) z``, ``score = (D(x, s) - x) / s^2 + A^T (y - A x) /
    (data_std^2 + s^2)``, ``alpha = epsilon / (1 / s^2 + L / (data_std^2 + s^2))``

    with ``L = ||A^T A||``: the step is ``epsilon`` times the inverse of a bound on the score's
    Lipschitz constant, so ``epsilon < 1`` is stable at every level. Unlike DPS/PaDIS it uses the
    true likelihood, so with an exact prior and enough steps at a small ``sigma_min`` it samples
    the posterior (the tests check this on a Gaussian model); with ~1000 evaluations on images it
    is a slowly mixing reference. The last estimate is ``D(x, sigma_min)``. ``info``: ``sigma``,
    ``level``, ``residual``.
    """
    y, noise, shape, nfe0 = _setup(op, y, prior, noise, seed, cancel)
    levels = _check_int("levels", levels, 1)
    inner = _check_int("inner", inner, 1)
    epsilon = _check_float("epsilon", epsilon, 0.0, strict=True)
    data_std = _check_float("data_std", data_std, 0.0, strict=True)
    sigma_max = _check_float("sigma_max", sigma_max, 0.0, strict=True)
    sigma_min = _check_float("sigma_min", sigma_min, 0.0, strict=True)
    lip = normal_norm(op)
    sigmas = edm_sigmas(levels, sigma_min, sigma_max).tolist()[:levels]
    total = levels * inner
    aty = op.adjoint(y)
    x = sigma_max * noise.randn(shape, op.dtype, op.device)
    step = 0
    for j, s in enumerate(sigmas):
        w = 1.0 / (data_std**2 + s * s)
        alpha = epsilon / (1.0 / (s * s) + lip * w)
        for _ in range(inner):
            if cancel is not None:
                cancel.check(x)
            with torch.no_grad():
                d = _denoise(prior, x, s, noise)
                score = (d - x) / (s * s) + w * (aty - op.normal(x))
                x = x + alpha * score + math.sqrt(2.0 * alpha) * noise.randn(shape, op.dtype, op.device)
            step += 1
            est = d if step == total else x
            yield StepEvent(step, total, est, d, nfe=_nfe(prior, nfe0),
                            info={"sigma": s, "level": j + 1,
                                  "residual": float(torch.linalg.vector_norm(y - op.forward(d)))})


# ------------------------------------------------------------------------------------------------
# PnP-ADMM with the diffusion denoiser
# ------------------------------------------------------------------------------------------------


def pnp_admm_defaults(op, noise_std: float = 0.0, **overrides) -> dict:
    """Default PnP-ADMM parameters: ``iterations = 50`` (one network evaluation each), the
    denoiser level annealed geometrically from ``sigma_start = PNP_SIGMA_START[op]`` to
    ``sigma_end = PNP_SIGMA_END[op]``, ``cg_iterations = PNP_CG_ITERATIONS[op]`` (else DDS's),
    ``data_std = PNP_DATA_SCALE[op] * max(noise_std, 1e-3)`` (a floor keeps noiseless data
    finite), ``seed = 0``."""
    noise_std = _check_float("noise_std", noise_std, 0.0)
    cg = PNP_CG_ITERATIONS.get(op.name, DDS_CG_ITERATIONS.get(op.name, _DEFAULT_DDS_CG))
    scale = PNP_DATA_SCALE.get(op.name, _DEFAULT_PNP_DATA_SCALE)
    return {"iterations": 50, "sigma_start": PNP_SIGMA_START.get(op.name, _DEFAULT_PNP_SIGMA_START),
            "sigma_end": PNP_SIGMA_END.get(op.name, _DEFAULT_PNP_SIGMA_END),
            "cg_iterations": cg, "data_std": scale * max(noise_std, 1e-3), "seed": 0}


def pnp_admm(op, y, *, prior, iterations: int = 50, sigma_start: float = 0.1,
             sigma_end: float = 0.02, cg_iterations: int = 5, data_std: float = 0.01,
             noise: NoiseSource | None = None, seed: int = 0, cancel: CancelToken | None = None):
    """Plug-and-play ADMM (Venkatakrishnan et al. 2013) with the prior's denoiser as the
    proximal step, ``iterations`` network evaluations, no backpropagation.

    For ``min_x ||y - A x||^2 / (2 data_std^2) + R(x)`` with the split ``x = z`` and penalty
    ``1 / sigma^2``, start at ``x = z = op.initial(y)``, ``u = 0`` and per iteration at the level
    ``sigma_k`` (geometric from ``sigma_start`` to ``sigma_end``):

    1. ``x`` = ``cg_iterations`` CG steps (warm-started at the previous ``x``) on
       ``(I + gamma A^T A) x = z - u + gamma A^T y``, ``gamma = (sigma_k / data_std)^2``;
    2. ``z = D(x + u, sigma_k)``;
    3. ``u <- u + x - z``.

    The MMSE denoiser of a Gaussian prior ``N(mu, S)`` at level ``sigma`` is the proximal map of
    ``R(x) = (x - mu)^T S^-1 (x - mu) / 2`` with weight ``sigma^2``, so with such a prior, a fixed
    ``sigma`` and exact data steps the iteration is ADMM on the MAP problem and converges to the
    posterior mean (tested). The estimate is ``z``; the prior's random shifts make the iteration
    stochastic unless the prior has none. ``info``: ``sigma``, ``residual`` (``||y - A z||``).
    """
    y, noise, shape, nfe0 = _setup(op, y, prior, noise, seed, cancel)
    iterations = _check_int("iterations", iterations, 1)
    cg_iterations = _check_int("cg_iterations", cg_iterations, 0)
    sigma_start = _check_float("sigma_start", sigma_start, 0.0, strict=True)
    sigma_end = _check_float("sigma_end", sigma_end, 0.0, strict=True)
    data_std = _check_float("data_std", data_std, 0.0, strict=True)
    ratio = (sigma_end / sigma_start) ** (1.0 / max(iterations - 1, 1))
    aty = op.adjoint(y)
    with torch.no_grad():
        x = op.initial(y).to(op.dtype).expand(shape).clone()
    z, u = x.clone(), torch.zeros_like(x)
    for k in range(iterations):
        if cancel is not None:
            cancel.check(z)
        s = sigma_start * ratio**k
        gamma = (s / data_std) ** 2
        with torch.no_grad():
            x = conjugate_gradient(lambda v: v + gamma * op.normal(v), z - u + gamma * aty, x,
                                   cg_iterations)
            z = _denoise(prior, x + u, s, noise)
            u = u + x - z
        yield StepEvent(k + 1, iterations, z, z, nfe=_nfe(prior, nfe0),
                        info={"sigma": s, "residual": float(_residual_norm(op, y, z).norm())})


# ------------------------------------------------------------------------------------------------
# registration
# ------------------------------------------------------------------------------------------------

_SEED = Param("seed", int, None, "seed of the noise stream (initial and injected noise)")
_SIGMAS = (
    Param("sigma_max", float, None, "largest noise level of the EDM schedule (images in [0, 1])"),
    Param("sigma_min", float, None, "smallest nonzero noise level"),
)

DDS_PARAMS = (
    Param("nfe", int, None, "network evaluations (sampling steps)"),
    Param("eta", float, None, "stochasticity in [0, 1] (0: deterministic given the initial noise)"),
    Param("cg_iterations", int, None, "CG steps on the data term per sampling step"),
    Param("init", str, None, "start from pure noise or from the direct reconstruction plus noise",
          choices=INITS),
    Param("gamma", float, None,
          "data weight of the noisy formulation (I + gamma A^T A) x = x0_hat + gamma A^T y "
          "(default: None = noiseless A^T A x = A^T y for noiseless data)"),
    *_SIGMAS, _SEED,
)
DPS_PARAMS = (
    Param("nfe", int, None, "network evaluations (each with a backward pass)"),
    Param("zeta", float, None, "step on grad ||y - A D(x)||"),
    *_SIGMAS, _SEED,
)
PADIS_PARAMS = (
    Param("levels", int, None, "noise levels"),
    Param("inner", int, None, "Langevin iterations per level (nfe = levels * inner)"),
    Param("zeta", float, None, "step on grad ||y - A D(x)||"),
    *_SIGMAS, _SEED,
)

LANGEVIN_PARAMS = (
    Param("levels", int, None, "noise levels"),
    Param("inner", int, None, "Langevin steps per level (nfe = levels * inner)"),
    Param("epsilon", float, None, "step relative to the score's Lipschitz bound (< 1)"),
    Param("data_std", float, None, "noise std the likelihood assumes (default: the noise)"),
    *_SIGMAS, _SEED,
)

PNP_PARAMS = (
    Param("iterations", int, None, "ADMM iterations (one network evaluation each)"),
    Param("sigma_start", float, None, "denoiser level of the first iteration"),
    Param("sigma_end", float, None, "denoiser level of the last iteration (geometric in between)"),
    Param("cg_iterations", int, None, "CG steps on the data term per iteration"),
    Param("data_std", float, None, "noise std of the data term (default: the noise)"),
    _SEED,
)


def register() -> None:
    """Add "dds", "dps", "padis", "langevin" and "pnp-admm" (kind "diffusion") to the solver registry; idempotent.

    ``spec.run`` also needs ``prior=<Prior object>`` from the caller (not a registered param),
    and optionally ``noise=<NoiseSource>`` (e.g. for antithetic pairs)::

        spec = get_solver("dds")
        params = spec.resolve(op, noise_std)
        for event in spec.run(op, y, prior=prior, cancel=token, **params): ...
    """
    from . import SOLVERS, SolverSpec, register_solver

    for name, fn, params, defaults, doc in (
        ("dds", dds, DDS_PARAMS, dds_defaults,
         "decomposed diffusion sampling: denoise, CG data step, DDIM step (50 evaluations)"),
        ("dps", dps, DPS_PARAMS, dps_defaults,
         "diffusion posterior sampling: gradient of the data misfit through the denoiser"),
        ("padis", padis, PADIS_PARAMS, padis_defaults,
         "PaDIS reference sampler: annealed Langevin with a data gradient (1000 evaluations)"),
        ("langevin", langevin, LANGEVIN_PARAMS, langevin_defaults,
         "annealed Langevin with the Gaussian likelihood (calibrated in the limit; 1000 evaluations)"),
        ("pnp-admm", pnp_admm, PNP_PARAMS, pnp_admm_defaults,
         "plug-and-play ADMM with the prior's denoiser as the proximal step (50 evaluations)"),
    ):
        if name not in SOLVERS:
            register_solver(SolverSpec(name, fn, params, defaults, "diffusion", doc,
                                       sampler=name != "pnp-admm"))
