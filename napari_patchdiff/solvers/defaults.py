"""Per-operator tuned defaults of every method: one row per operator, each value with the run
that chose it.

Keys are ``"<method>.<name>"``. A name that is one of the method's parameters sets that
parameter's default (``"dds.eta"``); any other name is a knob of the method's default rule
(``"dds.prior_std"`` sets DDS's data weight ``gamma = (prior_std / noise_std)^2``; see each
method's ``rule``). :data:`FALLBACK` holds the values for operators without a tuned one, and the
rules' constants. :func:`knobs` is the only reader; :func:`overridden` lets a tuning script try
other values through the same path.

Runs cited (all on validation slices, never on test slices; results in ``benchmarks/results/``):
CT: lung2 slice 47 (256 x 256, 20 views, noise 0.2 unless said); MRI: brain1 slice 12 (TV) or 15
(the MRI prior's held-out slice); TV weights by ``benchmarks/classical.py --tune``
(``tv_tuning*.md``), starting values from a 64 x 64 Shepp-Logan phantom; sampler values by
``benchmarks/tune_samplers.py`` with the shipped priors (12,092-step ``ct`` prior).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

__all__ = ["Tuned", "TUNED", "FALLBACK", "LIMITED_ANGLE", "knobs", "overridden"]

#: suffix of a value for views covering less than a complete scan (``"dds.z_tv_ref"`` and
#: ``"dds.z_tv_ref_limited_angle"``): limited-angle CT needs its own coupling and data step
LIMITED_ANGLE = "_limited_angle"


@dataclass(frozen=True)
class Tuned:
    """A default value and the run that chose it."""

    value: Any
    run: str


_UNTUNED = "untuned starting value"

#: rows shared by the two CT geometries (the fan beam was never tuned on its own)
_CT = {
    "cg.noiseless_iterations": Tuned(25, "Shepp-Logan phantom, noiseless; early stopping "
                                          "regularises"),
    "admm-tv.weight": Tuned(2.0, "tv_tuning.md, lung2 47"),
    "admm-tv.noise_power": Tuned(2, "tv_tuning.md: ill-conditioned, lam ~ sigma^2 (MAP)"),
    "admm-tv.rho_rel": Tuned(0.002, "Shepp-Logan phantom: fastest ADMM convergence"),
    "dds.cg_iterations": Tuned(5, "dds_tuning.md (eta 1): 5 beat 10 by 0.2 dB and 2 by 1.2 dB"),
    "dds.prior_std": Tuned(0.1, "dds_tuning.md (warm start, eta 1): 0.1 and 0.2 tie to "
                                "0.01 dB, 0.05 0.03 dB and 0.01 1.6 dB below"),
    # limited angle: early stopping after 5 steps leaves the data step far from its solution
    # (the missing angles' directions converge slowest), so it gets more steps at a smaller
    # weight; dds_tuning.md (CT limited 90, lung2 47, two coordinate passes) and the 5-slice
    # validation gap (volumes_ztv_tuning.json, lung2 45-49, z_tv 0)
    "dds.cg_iterations_limited_angle": Tuned(40, "dds_tuning.md (CT limited 90, prior_std "
                                                 "0.05): 40 steps 27.04 dB, 25 26.78, 15 26.18, "
                                                 "5 24.94; the 5-slice gap at 40 steps "
                                                 "25.55/27.40/26.01 dB (axial/coronal/sagittal) "
                                                 "against 23.97/26.94/24.54 at the former 5 "
                                                 "(prior_std 0.1); axial SSIM 0.777 against 0.790"),
    "dds.prior_std_limited_angle": Tuned(0.05, "dds_tuning.md (CT limited 90, 40 CG steps): "
                                               "0.05 27.04 dB, 0.1 26.14 (SSIM 0.71: fits the "
                                               "noise), 0.02 25.53, 0.2 25.55; 8 views kept 5 "
                                               "steps at 0.1 (5: 27.35, 15: 27.28, 25: 27.25)"),
    "dds.eta": Tuned(1.0, "dds_tuning.md (warm start): 1 beat the paper's 0.15 by 4.5 dB, "
                          "0 by 4.8 dB and 0.8 by 1.0 dB"),
    "dds.start": Tuned("initial", "dds_tuning.md: FBP plus noise at 0.3 beat pure noise at 10 "
                                  "by 0.7 dB (at 1: +0.4 dB)"),
    "dds.sigma_max": Tuned(0.3, "dds_tuning.md, with the warm start above"),
    # TV along z; volumes_ztv_tuning.json (volumes.py --tune-ztv ... [--tune-with
    # z_tv_step=prox|admm]; lung2 45-49, 5 mm, noise 0.2), axial/coronal/sagittal dB
    "dds.z_tv_step": Tuned("admm", "full range, the two splits tie: summed over 8 and 20 views "
                                   "(slice by slice 26.56/29.24/26.77 and 33.83/35.17/34.32) "
                                   "admm 0.03 27.20/29.77/27.47 and 34.12/35.53/34.63, prox "
                                   "0.003 27.27/30.08/27.53 and 33.78/35.53/34.39 (-0.03 dB per "
                                   "cell), prox 0.001 27.11/29.86/27.33 and 34.19/35.65/34.72 "
                                   "(+0.02 dB per cell); admm stays"),
    "dds.z_tv_step_limited_angle": Tuned("prox", "at 0.01 prox beat admm in every orientation "
                                                 "under both 90 and 120 (+0.14 to +0.48 dB; "
                                                 "axial SSIM 0.820/0.871 against 0.804/0.855)"),
    "dds.z_tv_ref": Tuned(0.03, "admm, 8 views: against 0, 0.03 gained +0.64/+0.53/+0.70 dB; "
                                "0.1 lost 0.23 dB coronal there; 0.01 less"),
    # limited angle at its own data step (against 0: 25.55/27.40/26.01 under 90,
    # 29.28/31.17/29.96 under 120; --tune-tasks "CT limited 90" "CT limited 120")
    "dds.z_tv_ref_limited_angle": Tuned(0.005, "prox: 0.003 26.44/28.54/26.98 (90) and "
                                               "29.83/32.02/30.64 (120), 0.005 26.50/28.76/"
                                               "27.03 and 29.68/32.00/30.49 (mean PSNR tied to "
                                               "0.01 dB; axial SSIM 0.817/0.875 against "
                                               "0.812/0.874), 0.01 26.45/28.96/26.93 and "
                                               "29.32/31.85/30.11; admm: 0.01 26.31/28.49/26.78 "
                                               "and 29.22/31.37/29.92, 0.03 26.04/28.38/26.46 "
                                               "and 28.69/30.92/29.34, 0.1 lost under 120"),
    "adapt.steps": Tuned(1, "adapt_tuning.md (phantom prior, lung2 47): 1 Adam step per call at "
                            "lr 1e-3 +0.14 dB over no adaptation; 2 at 3e-3 -0.37 dB"),
    "adapt.lr": Tuned(1e-3, "adapt_tuning.md: 1e-4 +0.02 dB, 1e-3 +0.14 dB"),
    "dps.zeta_rel": Tuned(2.0, "dps_tuning.md, 1000 evaluations: 2 gave 32.6 dB, 1 and 4 lost "
                               "2.8 and 0.5 dB, 0.5 lost 8 dB"),
    "padis.zeta": Tuned(0.1, "padis_tuning.md, 1000 evaluations, grid 0.03-3: 0.1 gave "
                             "30.6 dB, 0.03 29.3 dB, the paper's 0.3 21.4 dB"),
    "pnp-admm.sigma_start": Tuned(0.1, "pnp_tuning.md: 35.83 dB; 0.4 loses 0.4-0.5 dB"),
    "pnp-admm.sigma_end": Tuned(0.02, "pnp_tuning.md: 0.01 and 0.05 lose 0.4-0.5 dB"),
    "pnp-admm.cg_iterations": Tuned(10, "pnp_tuning.md: 2 CG steps lose 10 dB"),
    "pnp-admm.data_scale": Tuned(0.5, "pnp_tuning.md"),
    # TV along z for PnP-ADMM; volumes_ztv_tuning_pnp-admm.json (volumes.py --tune-ztv ...
    # --tune-method pnp-admm [--tune-with z_tv_step=prox]; lung2 45-49, 5 mm, noise 0.2),
    # axial/coronal/sagittal dB against slice by slice
    "pnp-admm.z_tv_step": Tuned("prox", "full range: the proximal step gained under both 8 and "
                                        "20 views (below); ADMM under 8 views 0.1 +0.08/+0.27/"
                                        "-0.04, 0.3 -0.36/-0.10/-0.47"),
    "pnp-admm.z_tv_ref": Tuned(0.01, "prox, the only weight that gained in every cell under "
                                     "both 8 and 20 views: 0.01 +0.35/+0.38/+0.33 and +0.09/"
                                     "+0.12/+0.10; 0.003 +0.19/+0.19/+0.18 and +0.03/+0.04/"
                                     "+0.04; 0.03 +0.46/+0.58/+0.45 and -0.10/+0.05/-0.03; 0.1 "
                                     "+0.09/+0.25/+0.05 (8 views)"),
    "pnp-admm.z_tv_ref_limited_angle": Tuned(0.0, "limited angle 90 lost at every weight: "
                                                  "prox 0.003 -0.02/-0.01/-0.03, 0.01 -0.15/"
                                                  "-0.15/-0.18, 0.03 -0.42/-0.48/-0.50; ADMM "
                                                  "0.1 -0.20/-0.16/-0.23; off"),
}

TUNED: dict[str, dict[str, Tuned]] = {
    "ct-parallel": _CT,
    "ct-fan": _CT,
    "mri-cartesian": {
        "cg.noiseless_iterations": Tuned(2, "A^T A is a projection-like mask: CG converges in "
                                            "1-2 steps"),
        "admm-tv.weight": Tuned(0.4, "tv_tuning.md, brain1 12"),
        "admm-tv.rho_rel": Tuned(0.03, "Shepp-Logan phantom: fastest ADMM convergence"),
        "dds.cg_iterations": Tuned(0, "exact (closed form); 2 CG steps reached it exactly"),
        "dds.eta": Tuned(1.0, "dds_tuning_mri.md (brain1 15, the MRI prior's held-out slice): 1 "
                              "beat 0.8 by 1.8 dB and 0 by 8.1 dB"),
        "dds.start": Tuned("initial", "dds_tuning_mri.md: the zero-filled image plus noise at 0.3 "
                                      "beat pure noise at 10 by 0.6 dB (0.5: -0.06, 0.15: "
                                      "-0.16)"),
        "dds.sigma_max": Tuned(0.3, "dds_tuning_mri.md, with the warm start above"),
        "dds.z_tv_ref": Tuned(0.0, "volumes_ztv_tuning.json (volumes.py --tune-ztv 0 0.03 0.1 "
                                   "and 0.003 0.01 --tune-tasks 'MRI 4x'; brain1 13-17, 6.5 mm, "
                                   "noise 0.005; weights as given at 6.5 mm): every weight lost "
                                   "in every orientation, 0.003 -0.62/-0.52/-0.53 dB "
                                   "(axial/coronal/sagittal), 0.03 -4.3 dB, 0.1 -6.8 dB; so "
                                   "volumes run slice by slice"),
        "pnp-admm.sigma_start": Tuned(0.2, "pnp_tuning_mri.md (brain1 15): 0.2 ties with 0.1 "
                                           "and 0.4 to 0.02 dB, 0.05 loses 0.8 dB"),
        "pnp-admm.data_scale": Tuned(1.0, "pnp_tuning_mri.md: 1 beats 0.5 and 2 by 0.16 dB"),
        "pnp-admm.cg_iterations": Tuned(2, "DDS's former count, untuned for PnP-ADMM"),
        "adapt.steps": Tuned(1, "adapt_tuning.md (mri prior, brain2 2): every setting lost"),
        "adapt.lr": Tuned(1e-4, "adapt_tuning.md (brain2 2): 1e-4 -0.05 dB, 1e-3 -0.64 dB, "
                                "2 steps at 3e-3 -0.90 dB against no adaptation"),
    },
    "blur-gaussian": {
        "cg.noiseless_iterations": Tuned(60, "Shepp-Logan phantom, noiseless"),
        "admm-tv.weight": Tuned(6.0, "tv_tuning.md, lung2 47 blurred"),
        "admm-tv.noise_power": Tuned(2, "ill-conditioned: lam ~ sigma^2"),
        "admm-tv.rho_rel": Tuned(0.003, "Shepp-Logan phantom"),
        "dds.cg_iterations": Tuned(5, "dds_tuning.md (deblur): 5 ties with 10 (0.02 dB), beats 2 "
                                      "by 0.8 dB"),
        "dds.prior_std": Tuned(0.02, "dds_tuning.md (deblur): 4.1 dB above 0.01, 3.4 dB above 0.1"),
        "dds.eta": Tuned(1.0, "dds_tuning.md (deblur): 1 beat 0.15 by 4.4 dB"),
        "dds.start": Tuned("noise", "dds_tuning.md (deblur): pure noise 1.2 dB above the blurred "
                                    "image plus noise at 0.3"),
        "pnp-admm.cg_iterations": Tuned(5, "DDS's count, untuned for PnP-ADMM"),
    },
    "superres": {
        "cg.noiseless_iterations": Tuned(2, "A^T A is (1/f^2) a projection: CG converges in "
                                            "1-2 steps"),
        "admm-tv.weight": Tuned(0.2, "tv_tuning.md, lung2 47 downsampled x4"),
        "admm-tv.noise_power": Tuned(2, "ill-conditioned: lam ~ sigma^2"),
        "admm-tv.rho_rel": Tuned(0.1, "Shepp-Logan phantom"),
        "dds.cg_iterations": Tuned(3, "dds_tuning.md (SR x4): 2, 5 and 10 give identical results"),
        "dds.prior_std": Tuned(0.05, "dds_tuning.md (SR x4): 0.02-0.2 within 0.1 dB"),
        "dds.eta": Tuned(1.0, "dds_tuning.md (SR x4): 1 beat 0.15 by 1.9 dB"),
        "dds.start": Tuned("initial", "dds_tuning.md (SR x4): bicubic plus noise at 0.3, 0.9 dB "
                                      "above pure noise"),
        "dds.sigma_max": Tuned(0.3, "dds_tuning.md (SR x4), with the warm start above"),
        "pnp-admm.cg_iterations": Tuned(3, "DDS's count, untuned for PnP-ADMM"),
    },
    "inpaint": {
        "cg.noiseless_iterations": Tuned(1, "A^T A is the mask: CG converges in one step"),
        "admm-tv.weight": Tuned(2.0, "Shepp-Logan phantom"),
        "admm-tv.rho_rel": Tuned(0.1, "Shepp-Logan phantom"),
        "dds.cg_iterations": Tuned(0, "exact (closed form); one CG step reached it exactly"),
        "pnp-admm.cg_iterations": Tuned(1, "DDS's former count, untuned for PnP-ADMM"),
    },
    "denoise": {
        "cg.noiseless_iterations": Tuned(1, "A^T A = I"),
        "dds.anneal_sigma": Tuned(0.05, "dds_tuning.md (denoise, sigma 0.1, lung2 47): 33.0 dB "
                                         "against 23.0 for the best constant data weight (0.1: "
                                         "30.6)"),
        "dds.start": Tuned("initial", "dds_tuning.md (denoise): the noisy image plus noise at 0.5 "
                                      "(0.3: -0.03 dB, pure noise at 10: -0.35 dB)"),
        "dds.sigma_max": Tuned(0.5, "dds_tuning.md (denoise), with the warm start above"),
        "dds.eta": Tuned(1.0, "dds_tuning.md (denoise): 1 beat 0.8 by 0.4 dB and 0.5 by 7 dB"),
        "admm-tv.weight": Tuned(0.6, "Shepp-Logan phantom"),
        "admm-tv.rho_rel": Tuned(0.1, "Shepp-Logan phantom"),
        "dds.cg_iterations": Tuned(0, "exact (closed form); one CG step reached it exactly"),
        "pnp-admm.cg_iterations": Tuned(1, "DDS's former count, untuned for PnP-ADMM"),
    },
}

#: operators without a tuned value, and the rules' constants
FALLBACK: dict[str, Tuned] = {
    "cg.noiseless_iterations": Tuned(20, _UNTUNED),
    "cg.noise_ref": Tuned(0.0025, "Shepp-Logan phantom: with noise, CG stops after "
                                  "max(2, round(n / (1 + sigma_x / noise_ref))) steps"),
    "admm-tv.weight": Tuned(1.0, _UNTUNED),
    "admm-tv.noise_power": Tuned(1, "well-conditioned operators: lam ~ sigma"),
    "admm-tv.noise_floor": Tuned(0.005, "tv_tuning.md: keeps some TV on noiseless data"),
    "admm-tv.rho_rel": Tuned(0.01, _UNTUNED),
    "admm-tv.rho_per_lam": Tuned(10.0, "Shepp-Logan phantom: ADMM fastest at rho ~ 3-30 lam"),
    "dds.cg_iterations": Tuned(5, _UNTUNED),
    "dds.prior_std": Tuned(0.05, _UNTUNED),
    "dds.eta": Tuned(0.15, "the DDS paper's value, untuned here"),
    "dds.anneal_sigma": Tuned(0.0, "DDS's constant data weight"),
    "dds.z_weight_ref": Tuned(0.0, "volumes_z_tuning.json (volumes.py --tune-z, lung2 45-49, "
                              "limited angle 90, 5 mm): 0.03 and 0.1 lose 0.65-1.73 dB in every "
                              "orientation against 0, so volumes run slice by slice"),
    "pnp-admm.z_weight_ref": Tuned(0.0, "untuned; 0 as for DDS (volumes_z_tuning.json)"),
    "dds.z_tv_ref": Tuned(0.0, "untuned: off until a tuning run shows a gain"),
    "dds.z_tv_ref_limited_angle": Tuned(0.0, "untuned: off until a tuning run shows a gain"),
    "dds.z_tv_step": Tuned("admm", "DiffusionMBIR's split; untuned beyond CT"),
    "pnp-admm.z_tv_step": Tuned("admm", "volumes_ztv_tuning_pnp-admm.json: neither split "
                                        "gained under both limited angle 90 and 8 views (prox "
                                        "0.003-0.03: +0.2 to +0.6 dB under 8 views, -0.01 to "
                                        "-0.50 under 90); z_tv is off, so the split is moot"),
    "pnp-admm.z_tv_ref": Tuned(0.0, "volumes_ztv_tuning_pnp-admm.json (volumes.py --tune-ztv "
                                    "--tune-method pnp-admm, lung2 45-49, 5 mm, noise 0.2): 0.1 "
                                    "lost 0.16-0.23 dB under limited angle 90 and gained "
                                    "+0.08/+0.27/-0.04 (axial/coronal/sagittal) under 8 views, "
                                    "0.3 lost under 8 views; off"),
    "pnp-admm.z_tv_ref_limited_angle": Tuned(0.0, "as pnp-admm.z_tv_ref (limited angle 90 "
                                                  "included): off"),
    # DPS, PaDIS and Langevin take 1000 evaluations with (DPS, PaDIS) a backward pass each:
    # about 40 minutes per 256 x 256 slice on a CPU core (README), too slow to tune a volume term
    "dps.z_tv_ref": Tuned(0.0, "untuned (1000 evaluations a run): off until a tuning run shows "
                               "a gain"),
    "padis.z_tv_ref": Tuned(0.0, "untuned, as dps.z_tv_ref"),
    "langevin.z_tv_ref": Tuned(0.0, "untuned, as dps.z_tv_ref"),
    "dds.start": Tuned("noise", "EDM's pure-noise start"),
    "dds.sigma_max": Tuned(10.0, "EDM's sigma_max"),
    "dps.zeta_rel": Tuned(0.5, _UNTUNED),
    "padis.zeta": Tuned(0.3, "the PaDIS paper's value (20-view CT), untuned here"),
    "pnp-admm.sigma_start": Tuned(0.1, _UNTUNED),
    "pnp-admm.sigma_end": Tuned(0.02, _UNTUNED),
    "pnp-admm.cg_iterations": Tuned(5, _UNTUNED),
    "pnp-admm.data_scale": Tuned(1.0, _UNTUNED),
    "pnp-admm.noise_floor": Tuned(0.002, "CT 20 views, noise 0, lung2 47 (the validation "
                                         "slice): 35.80 dB (0.005: 36.32, 0.01: 35.17, a 1e-3 "
                                         "floor in measurement units: 25.18; ADMM-TV 30.90); "
                                         "0.002 stays below realistic noise (CT 0.2 is 0.0028 "
                                         "on the image scale), so the tuned noisy default "
                                         "holds"),
    "adapt.steps": Tuned(1, "as for CT (adapt_tuning.md), untuned here"),
    "adapt.rank": Tuned(4, "the D3IP paper's range 4-12, untuned here"),
    "adapt.lr": Tuned(1e-3, "the D3IP paper's Adam rate, untuned here"),
    "adapt.every": Tuned(1, "a round before every denoiser call, untuned here"),
    "adapt.tv": Tuned(0.0, "no TV penalty, untuned here"),
    "adapt.discrepancy": Tuned(1.0, "the discrepancy principle, untuned here"),
}

_OVERRIDES: dict[str, dict[str, Any]] = {}


def knobs(operator: str, method: str, limited_angle: bool = False) -> dict[str, Any]:
    """The tuned values of ``method`` for ``operator`` (fallbacks where the operator has none),
    without the method prefix: ``knobs("ct-parallel", "dds")["eta"] == 1.0``.

    A name with the suffix :data:`LIMITED_ANGLE` holds the value for views covering less than a
    complete scan: with ``limited_angle`` it replaces the plain name's value of the same layer
    (fallbacks, then the operator's row, then :func:`overridden` values, each over the last);
    it is never returned itself."""
    prefix = method + "."
    out: dict[str, Any] = {}
    tuned = {k: t.value for k, t in TUNED.get(operator, {}).items()}
    for layer in ({k: t.value for k, t in FALLBACK.items()}, tuned, _OVERRIDES.get(operator, {})):
        own = {k[len(prefix):]: v for k, v in layer.items() if k.startswith(prefix)}
        out.update({k: v for k, v in own.items() if not k.endswith(LIMITED_ANGLE)})
        if limited_angle:
            out.update({k[:-len(LIMITED_ANGLE)]: v for k, v in own.items()
                        if k.endswith(LIMITED_ANGLE)})
    return out


@contextlib.contextmanager
def overridden(operator: str, values: dict[str, Any]) -> Iterator[None]:
    """Within the block, ``values`` (``{"dds.prior_std": 0.05, ...}``) replace the tuned values
    of ``operator``: how ``benchmarks/tune_samplers.py`` tries a grid through the same rules."""
    previous = _OVERRIDES.get(operator)
    _OVERRIDES[operator] = {**(previous or {}), **values}
    try:
        yield
    finally:
        if previous is None:
            _OVERRIDES.pop(operator, None)
        else:
            _OVERRIDES[operator] = previous
