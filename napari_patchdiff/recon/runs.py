"""One run of a method on a problem: its parameters, its prior, its step generator, its report.

The API (:mod:`napari_patchdiff.api`), ensembles (:mod:`napari_patchdiff.uncertainty`) and the
GUI's jobs (:mod:`napari_patchdiff.plugin.jobs`) all start a run through :func:`iterate` (or
:func:`~napari_patchdiff.uncertainty.ensemble`), which runs it on an executor
(:mod:`napari_patchdiff.recon.executors`, here or on a cluster), drive it with
:class:`~napari_patchdiff.events.Drive` and describe it with :func:`make_report`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import InputError
from ..events import CancelToken, StepEvent
from ..solvers import get_solver
from . import metrics
from .problem import Problem

__all__ = ["Result", "method_params", "needs_prior", "resolve_prior", "prior_info", "iterate",
           "to_array", "make_report", "result_of"]


@dataclass
class Result:
    """A finished (or, after a cancel, partial) reconstruction with its report."""

    recon: np.ndarray  # normalised scale, (H, W) or (D, H, W)
    report: dict[str, Any]
    last: StepEvent
    prior: Any = None  # the prior the run used (an adapted prior can be saved: .save(path))


def method_params(problem: Problem, method: str, **given) -> dict[str, Any]:
    """The parameters ``method`` runs with on ``problem``: the given ones, checked, and the
    defaults for its operator and noise level."""
    return get_solver(method).resolve(problem.op, problem.noise_std, problem.volume, **given)


def needs_prior(method: str) -> bool:
    """Whether ``method`` is a diffusion method that needs a prior."""
    return get_solver(method).kind == "diffusion"


def resolve_prior(problem: Problem, method: str, prior=None, adapt=None,
                  precision: str | None = "auto"):
    """The prior object for a diffusion ``method`` (a shipped name, a path or a Prior), checked
    against the problem's image size and modality, and wrapped for test-time adaptation to the
    problem's measurement when ``adapt`` is True or a dict of adaptation parameters
    (:mod:`napari_patchdiff.recon.adapt`), at ``precision`` ("auto": bfloat16 where the device
    multiplies it natively, else float32, :mod:`napari_patchdiff.priors.precision`; "float32",
    "bfloat16"; None: the prior's own); ``None`` for classical methods."""
    if not (adapt is None or isinstance(adapt, (bool, dict))):
        raise InputError(f"adapt must be True, False, None or a dict of adaptation parameters "
                         f"(e.g. {{'steps': 3, 'lr': 1e-3}}), got {adapt!r}"[:160])
    if not needs_prior(method):
        if prior is not None:
            raise InputError(f"method {method!r} does not use a prior; drop --prior")
        if precision not in (None, "auto", "float32"):
            raise InputError(f"method {method!r} has no network to run in {precision}; drop "
                             "--precision")
        if adapt:
            raise InputError(f"method {method!r} has no prior to adapt; drop --adapt")
        return None
    if prior is None:
        raise InputError(f"method {method!r} needs a prior: pass a shipped prior name "
                         f"(e.g. 'ct') or a checkpoint path")
    if isinstance(prior, (str, Path)):
        from ..priors import load_prior

        prior = load_prior(prior, device=problem.op.device)
    elif not (hasattr(prior, "denoise") and hasattr(prior, "check")):
        raise InputError(f"prior must be a shipped prior's name, a checkpoint path or a loaded "
                         f"prior (load_prior), got {type(prior).__name__}")
    if precision is not None:
        if not hasattr(prior, "with_precision"):
            raise InputError(f"this prior ({type(prior).__name__}) has no precision setting")
        prior = prior.with_precision(precision)
    modality = problem.truth.modality if problem.truth is not None else None
    prior.check(problem.op.image_shape, None if modality == "unit" else modality)
    if adapt and not getattr(prior, "adapting", False):  # not adapting yet
        from .adapt import adapt_prior

        prior = adapt_prior(prior, problem, adapt, method)
    return prior


def prior_info(prior) -> dict[str, Any]:
    """What a report records of the prior a run used."""
    return {**{k: prior.metadata.get(k) for k in ("name", "kind", "modality", "steps",
                                                   "created", "source")},
            "precision": getattr(prior, "precision", "float32"),
            "precision_reason": getattr(prior, "precision_reason", "the prior's own")}


def _coupled_overlap(used: dict) -> int:
    """The default context slices on each side of a window: 2 when the method couples slices
    along z (``z_weight``, ``z_tv``, ``tv3d``), else 0."""
    return 2 if used.get("z_weight") or used.get("z_tv") or used.get("tv3d") else 0


def iterate(problem: Problem, method: str, cancel: CancelToken | None = None, prior=None,
            adapt=None, batch: int | None = None, overlap: int | None = None, cluster=None,
            precision: str | None = "auto", **params) -> Iterator[StepEvent]:
    """The step generator of ``method`` on ``problem`` (``prior``: a name, path or Prior, for
    diffusion methods; ``adapt``: test-time adaptation, see :func:`resolve_prior`; ``params``:
    the method's parameters, the rest take their defaults). With adaptation each event's
    ``info`` carries ``adapt_loss``, the latest self-supervised loss.

    A volume deeper than ``batch`` slices (default
    :data:`~napari_patchdiff.recon.volumes.VOLUME_BATCH`) runs window by window in bounded memory,
    with ``overlap`` slices of context (default 2 when the method couples slices along z, else 0);
    see :mod:`napari_patchdiff.recon.volumes`. An operator whose data couple every slice
    (``op.couples_slices``: ``mri-cartesian-3d``) runs the whole volume as one window, whatever
    ``batch`` says (its memory grows with the depth; the memory check counts every slice).

    ``cluster`` (see :func:`napari_patchdiff.recon.executors.resolve_executor`): None or "local"
    runs here, step by step; "ray" or "ray:ADDRESS" runs the windows on Ray workers at once (a run
    of one window, or of one image, on one worker); each finished window is one step event, windows
    in the order they finish, with the same result as here.
    """
    from .executors import resolve_executor
    from .volumes import VOLUME_BATCH, VolumeWork, iterate_volume, windows

    executor = resolve_executor(cluster)
    executor.check_adaptation(adapt or getattr(prior, "adapting", False))
    prior = resolve_prior(problem, method, prior, adapt, precision)
    batch = VOLUME_BATCH if batch is None else int(batch)
    if problem.op.couples_slices:  # data coupling every slice (3D k-space): one window
        batch = max(batch, problem.slices)
    whole = problem.volume is None or problem.slices <= batch
    if prior is not None and batch >= 1:  # the network's memory, per worker here
        from .memory import check_run_memory

        context = 2 if overlap is None else max(0, int(overlap))  # the default's most
        check_run_memory(prior, method, problem.image_shape,
                         problem.slices if whole else min(problem.slices, batch + 2 * context),
                         executor.workers_here(1 if whole else -(-problem.slices // batch)))
    used = method_params(problem, method, **params)  # bad parameters fail here, not mid-run
    if executor.remote or not whole:  # windows are checked on a cluster even when one fits
        overlap = _coupled_overlap(used) if overlap is None else int(overlap)
        parts = windows(problem.slices, batch, overlap)
    items = [None] if whole else list(enumerate(parts))
    work = VolumeWork(problem, method, prior, params, int(used.get("seed", 0)))
    return iterate_volume(problem, work, executor, items, cancel)


def to_array(problem: Problem, estimate: torch.Tensor) -> np.ndarray:
    """The first reconstruction of a batch estimate ``(B, 1, H, W)`` as ``(H, W)`` or
    ``(D, H, W)`` float32 on the CPU (normalised scale)."""
    x = estimate.detach()[: problem.slices, 0].to("cpu", torch.float32).numpy()
    return x[0] if problem.squeeze else x


def make_report(problem: Problem, method: str, params: dict, last: StepEvent, seconds: float,
                recon: np.ndarray, prior=None) -> dict[str, Any]:
    """Provenance and quality of a run: method and parameters, operator, noise, seed, time,
    iterations, network evaluations, device, and PSNR/SSIM when the truth is known."""
    report: dict[str, Any] = {
        "method": method,
        "method_params": params,
        "operator": problem.op.describe(),
        "measurement_units": problem.op.measurement_units,
        "noise_std": problem.noise_std,
        "noise_origin": problem.noise_origin,
        "seed": problem.seed,
        "seconds": round(seconds, 4),
        "iterations": last.step,
        "nfe": last.nfe,
        "device": str(problem.op.device),
        "intensity_scale": "normalised [0, 1] (see napari_patchdiff.conventions)",
    }
    if prior is not None:
        report["prior"] = prior_info(prior)
        if getattr(prior, "adapting", False):
            report["adaptation"] = prior.summary()
    if problem.slice_index is not None:  # one slice of a volume or a measurement stack
        report["slice"] = problem.slice_index
    if "window" in last.info:  # a volume run window by window
        report["finished_slices"] = list(last.info["finished"])
    if problem.truth is not None:
        t = problem.truth
        report.update(modality=t.modality, modality_reason=t.meta.get("modality_reason"),
                      mri_scale=t.scale, metric_data_range=1.0)
        scores: dict[str, Any] = {}
        try:  # the reconstruction is worth more than its scores: never lose it to them
            scores["psnr"] = round(metrics.psnr(recon, t.x), 4)
            try:
                scores["ssim"] = round(metrics.ssim(recon, t.x), 5)
            except InputError:  # images smaller than the SSIM window
                scores["ssim"] = None
            if np.asarray(recon).ndim == 3:
                scores["psnr_per_slice"] = [round(v, 4)
                                            for v in metrics.per_slice_psnr(recon, t.x)]
            report.update(scores)  # all scores or none: never a PSNR without its SSIM
        except MemoryError:
            report["metrics_skipped"] = "out of memory while computing PSNR/SSIM"
    return report


def result_of(problem: Problem, method: str, params: dict, last: StepEvent, seconds: float,
              prior=None) -> Result:
    """The :class:`Result` of a run whose last step is ``last``."""
    recon = to_array(problem, last.estimate)
    return Result(recon, make_report(problem, method, params, last, seconds, recon, prior), last,
                  prior)
