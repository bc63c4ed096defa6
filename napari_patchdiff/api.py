"""The Python API: simulate a measurement, run a method, get a result with its report.

The CLI and the napari widgets are thin layers over these functions::

    from napari_patchdiff import api
    truth = api.load_truth("sample:ct", slice=10)
    problem = api.simulate(truth, "ct-parallel", noise=0.5, seed=0, views=20)
    result = api.solve(problem, "admm-tv")
    print(result.report["psnr"])
    ensemble = api.sample(problem, "dds", prior="ct", samples=8, design="antithetic")
    print(ensemble.report["coverage"])
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from . import conventions, io, metrics
from .errors import InputError
from .events import Cancelled, CancelToken, StepEvent
from .operators import Operator, add_noise, make_operator
from .solvers import get_solver


@dataclass
class Truth:
    """A ground-truth image or volume on the normalised scale, with how to map it back."""

    x: np.ndarray  # (H, W) or (D, H, W), float32 in [0, 1]
    modality: str  # "ct" | "mri" | "unit"
    scale: float | None = None  # MRI normalisation constant
    meta: dict[str, Any] = field(default_factory=dict)

    def to_units(self, x_unit: np.ndarray) -> np.ndarray:
        return conventions.denormalise(x_unit, self.modality, self.scale)


@dataclass
class Problem:
    """A measurement ``y = A x + n`` ready to be reconstructed."""

    op: Operator
    y: torch.Tensor  # (B, 1, *measurement_shape)
    noise: float = 0.0
    seed: int = 0
    truth: Truth | None = None
    squeeze: bool = False  # the input was one 2D image, not a volume

    @property
    def truth_batch(self) -> torch.Tensor | None:
        if self.truth is None:
            return None
        x = torch.from_numpy(np.ascontiguousarray(self.truth.x))
        x = x[None, None] if x.ndim == 2 else x[:, None]
        return x.to(self.op.device, self.op.dtype)


@dataclass
class Result:
    recon: np.ndarray  # normalised scale, (H, W) or (D, H, W)
    report: dict[str, Any]
    last: StepEvent


def load_truth(source, modality: str | None = None, slice: int | None = None) -> Truth:
    """Read a ground truth in its own units (a path, or ``sample:ct`` / ``sample:mri``)."""
    if isinstance(source, str) and source.startswith("sample:"):
        from .samples import load_sample

        arr, meta = load_sample(source.split(":", 1)[1])
    else:
        arr, meta = io.read_image(source)
    return truth_from_array(arr, meta, modality=modality, slice=slice)


def truth_from_array(arr, meta=None, modality=None, slice=None) -> Truth:
    meta = dict(meta or {})
    arr = np.asarray(arr)
    if arr.ndim not in (2, 3):
        raise InputError(f"expected a 2D image or a 3D volume, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError(f"the image contains {int((~np.isfinite(arr)).sum())} NaN or infinite values")
    if slice is not None:
        if arr.ndim != 3:
            raise InputError("--slice needs a volume (D, H, W); the input is a 2D image")
        if not -arr.shape[0] <= slice < arr.shape[0]:
            raise InputError(f"slice {slice} is outside the volume's {arr.shape[0]} slices")
        arr = arr[slice]
        meta["slice"] = int(slice)
        if meta.get("spacing") is not None and len(meta["spacing"]) == 3:
            meta["spacing"] = tuple(meta["spacing"])[1:]  # the slice keeps its in-plane spacing
    modality = modality or io.guess_modality(arr, meta)
    x, scale = conventions.normalise(arr, modality)
    if modality == "unit" and (x.min() < -0.5 or x.max() > 1.5):
        raise InputError(
            f"modality 'unit' expects values on the normalised [0, 1] scale, got "
            f"[{x.min():.3g}, {x.max():.3g}]; pass --modality ct (HU) or mri"
        )
    return Truth(x=np.ascontiguousarray(x, dtype=np.float32), modality=modality, scale=scale, meta=meta)


def simulate(truth: Truth, operator: str, noise: float = 0.0, seed: int = 0, device="cpu",
             dtype=torch.float32, **op_params) -> Problem:
    """Simulate ``y = A x + noise`` from a ground truth (noise std in measurement units)."""
    op = make_operator(operator, truth.x.shape[-2:], device=device, dtype=dtype, **op_params)
    problem = Problem(op=op, y=None, noise=float(noise), seed=int(seed), truth=truth,
                      squeeze=truth.x.ndim == 2)
    with torch.no_grad():
        problem.y = add_noise(op(problem.truth_batch), noise, seed=seed)
    return problem


def from_measurement(y, operator: str, image_shape, device="cpu", dtype=torch.float32,
                     **op_params) -> Problem:
    """Wrap a measured sinogram / k-space ``(M...)`` or stack ``(D, M...)`` as a problem."""
    op = make_operator(operator, image_shape, device=device, dtype=dtype, **op_params)
    y = torch.as_tensor(np.asarray(y))
    nd = len(op.measurement_shape)
    if y.ndim == nd:
        y, squeeze = y[None, None], True
    elif y.ndim == nd + 1:
        y, squeeze = y[:, None], False
    else:
        raise InputError(
            f"{operator}: expected a measurement of shape {op.measurement_shape} or "
            f"(D, {', '.join(map(str, op.measurement_shape))}), got {tuple(y.shape)}"
        )
    return Problem(op=op, y=op.check_measurement(y), squeeze=squeeze)


def method_params(problem: Problem, method: str, **overrides) -> dict[str, Any]:
    """The method's documented defaults for this operator and noise, with overrides applied."""
    return get_solver(method).resolve(problem.op, problem.noise, **overrides)


def needs_prior(method: str) -> bool:
    """Whether ``method`` is a diffusion sampler that needs a prior."""
    return get_solver(method).kind == "diffusion"


def resolve_prior(problem: Problem, method: str, prior=None):
    """The prior object for a diffusion ``method`` (a shipped name, a path or a Prior), checked
    against the problem's image size and modality; ``None`` for classical methods."""
    if not needs_prior(method):
        if prior is not None:
            raise InputError(f"method {method!r} does not use a prior; drop --prior")
        return None
    if prior is None:
        raise InputError(f"method {method!r} needs a prior: pass a shipped prior name "
                         f"(e.g. 'ct') or a checkpoint path")
    if isinstance(prior, (str, Path)):
        from .priors import load_prior

        prior = load_prior(prior, device=problem.op.device)
    modality = problem.truth.modality if problem.truth is not None else None
    prior.check(problem.op.image_shape, None if modality == "unit" else modality)
    return prior


def iterate(problem: Problem, method: str, cancel: CancelToken | None = None, prior=None,
            **params) -> Iterator[StepEvent]:
    """The solver generator for ``problem`` (the GUI and CLI drive this)."""
    spec = get_solver(method)
    extra = {"prior": resolve_prior(problem, method, prior)} if needs_prior(method) else {}
    return spec.run(problem.op, problem.y, cancel=cancel, **extra,
                    **method_params(problem, method, **params))


def solve(problem: Problem, method: str, cancel: CancelToken | None = None,
          on_event: Callable[[StepEvent], None] | None = None, prior=None, **params) -> Result:
    """Run ``method`` to the end and return the reconstruction with its report.

    If the run is cancelled (the token, or Ctrl-C), the exception carries the last completed
    step as ``exc.partial`` (a :class:`Result` whose report says ``"cancelled": True``).
    """
    used = method_params(problem, method, **params)
    prior_obj = resolve_prior(problem, method, prior)
    extra = {"prior": prior_obj} if prior_obj is not None else {}
    t0 = time.perf_counter()
    last = None
    try:
        for last in get_solver(method).run(problem.op, problem.y, cancel=cancel, **extra, **used):
            if on_event is not None:
                on_event(last)
    except (Cancelled, KeyboardInterrupt) as exc:
        if last is not None:
            exc.partial = _result(problem, method, used, last, time.perf_counter() - t0)
            exc.partial.report["cancelled"] = True
        raise
    if last is None:
        raise RuntimeError(f"method {method!r} yielded no step")
    result = _result(problem, method, used, last, time.perf_counter() - t0)
    if prior_obj is not None:
        result.report["prior"] = {k: prior_obj.metadata.get(k) for k in
                                  ("name", "kind", "modality", "steps", "created")}
    return result


def sample(problem: Problem, method: str = "dds", prior=None, samples: int = 8,
           design: str = "iid", **kwargs):
    """A posterior ensemble of ``problem`` with its uncertainty maps and report; see
    :func:`napari_patchdiff.uncertainty.run_ensemble` (``batch``, ``seed``, ``roi``, ``level``,
    ``cancel``, ``on_event`` and the method's parameters)."""
    from .uncertainty import run_ensemble

    return run_ensemble(problem, method, prior=prior, samples=samples, design=design, **kwargs)


def _result(problem: Problem, method: str, used: dict, last: StepEvent, seconds: float) -> Result:
    recon = last.estimate.detach().to("cpu", torch.float32).numpy()[:, 0]
    if problem.squeeze:
        recon = recon[0]
    return Result(recon=recon, report=make_report(problem, method, used, last, seconds, recon),
                  last=last)


def make_report(problem: Problem, method: str, params: dict, last: StepEvent, seconds: float,
                recon: np.ndarray) -> dict[str, Any]:
    report: dict[str, Any] = {
        "method": method,
        "method_params": params,
        "operator": problem.op.describe(),
        "measurement_units": problem.op.measurement_units,
        "noise_std": problem.noise,
        "seed": problem.seed,
        "seconds": round(seconds, 4),
        "iterations": last.step,
        "nfe": last.nfe,
        "device": str(problem.op.device),
        "intensity_scale": "normalised [0, 1] (see napari_patchdiff.conventions)",
    }
    if problem.truth is not None:
        t = problem.truth
        report.update(
            modality=t.modality,
            mri_scale=t.scale,
            psnr=round(metrics.psnr(recon, t.x), 4),
            ssim=round(metrics.ssim(recon, t.x), 5),
            metric_data_range=1.0,
        )
        if np.asarray(recon).ndim == 3:
            report["psnr_per_slice"] = [round(v, 4) for v in metrics.per_slice_psnr(recon, t.x)]
    return report
