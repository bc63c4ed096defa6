"""Background jobs of the dock widgets: frozen configs, Qt-free update generators, worker glue.

A widget snapshots its inputs on the main thread into a frozen :class:`ReconJob` or
:class:`TrainJob`. :func:`recon_updates` and :func:`train_updates` drive the core generators
(:func:`~napari_patchdiff.api.iterate`, :func:`~napari_patchdiff.uncertainty.ensemble`,
:func:`~napari_patchdiff.training.train`) and yield :class:`Update` messages that hold numpy
arrays only (tensors are converted in the worker), at most a few per second; the last one
(``"done"`` or ``"cancelled"``) always comes. They import no Qt, so scripts and benchmarks can
drive them in their own thread. :func:`start_worker` runs one on a napari thread worker;
:func:`guarded` re-raises failures as :class:`~napari_patchdiff.errors.JobError`, because
superqt's generator worker swallows a ``RuntimeError`` (torch errors, CUDA out of memory).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .. import api, io, metrics, uncertainty
from ..errors import InputError, JobError
from ..events import Cancelled, CancelToken
from ..operators import make_operator
from ..solvers import get_solver

__all__ = ["Update", "Pace", "ReconJob", "TrainJob", "recon_updates", "train_updates", "guarded",
           "start_worker", "to_units", "on_device", "devices", "error_message"]


@dataclass(frozen=True)
class Update:
    """One message from a job to the main thread.

    kind : "step" (an intermediate estimate or training step), "sample" (a finished posterior
        sample), then one final "done" or "cancelled".
    step, total : progress of the whole job (all batches of an ensemble).
    image : the current estimate in display units (the truth's units when known).
    metrics : live values (psnr, ssim against the truth; loss when training).
    samples : the finished samples so far (N, ...), display units.
    maps : ensemble summaries in display units: mean, std, lower, upper and (antithetic, at
        least 3 pairs) the per-pixel within-pair correlation.
    report : provenance (the api.make_report / uncertainty.summarise dict; prior metadata).
    """

    kind: str
    step: int = 0
    total: int = 0
    image: np.ndarray | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    samples: np.ndarray | None = None
    maps: dict[str, np.ndarray] | None = None
    report: dict[str, Any] = field(default_factory=dict)
    text: str = ""


@dataclass(frozen=True)
class ReconJob:
    """A reconstruction (``samples == 1``) or a posterior ensemble (``samples > 1``)."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)  # method parameters, without seed
    seed: int = 0
    device: str = "cpu"
    samples: int = 1
    design: str = "iid"
    batch: int | None = None  # samples per sampler run (None: uncertainty.default_batch)
    prior: str | None = None  # shipped prior name or checkpoint path
    level: float = 0.9  # credible level of the lower/upper bounds
    interval: float = 0.25  # seconds between streamed estimates


@dataclass(frozen=True)
class TrainJob:
    """Training a patch prior on image layers (see :func:`napari_patchdiff.training.train`)."""

    out: str
    modality: str | None = None  # None: from the first layer's metadata or values
    config: str = "cpu"
    steps: int = 2000
    batch: int | None = None
    patch_sizes: tuple[int, ...] = (16, 32, 64)
    pad: int | None = None
    resume: bool = False
    overwrite: bool = False
    device: str = "cpu"
    seed: int = 0
    save_every: int = 200
    val_every: int = 500
    interval: float = 0.25


class Pace:
    """How often a job streams an update: every ``minimum`` seconds at most, and, if
    ``max_load`` is set, rarely enough that showing the updates (``cost`` seconds each, measured
    by the main thread) takes at most that fraction of the main thread's time. The worker reads
    it, the main thread updates ``cost``."""

    def __init__(self, minimum: float = 0.25, max_load: float | None = None):
        self.minimum, self.max_load, self.cost = float(minimum), max_load, 0.0

    @property
    def interval(self) -> float:
        return max(self.minimum, self.cost / self.max_load if self.max_load else 0.0)

    def measured(self, seconds: float) -> None:
        self.cost = seconds if not self.cost else 0.5 * (self.cost + seconds)


class _Throttle:
    def __init__(self, pace: Pace):
        self.pace, self.last = pace, -math.inf

    def __call__(self) -> bool:
        now = time.perf_counter()
        if now - self.last >= self.pace.interval:
            self.last = now
            return True
        return False


def _cancelled(cancel) -> bool:
    return cancel is not None and cancel.cancelled


def devices() -> list[str]:
    """The torch devices to offer: cpu and each CUDA device torch sees."""
    return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def on_device(problem: api.Problem, device) -> api.Problem:
    """``problem`` with its operator and measurement on ``device`` (itself if already there)."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r}: torch sees no CUDA device")
    if dev == problem.op.device:
        return problem
    op = make_operator(problem.op.name, problem.op.image_shape, device=dev, dtype=problem.op.dtype,
                       **problem.op.params)
    return dataclasses.replace(problem, op=op, y=problem.y.to(dev))


# ------------------------------------------------------------------------------------------------
# reconstruction


def to_units(problem, x, shift: bool = True) -> np.ndarray:
    """Normalised values in display units (the truth's); ``shift=False`` for differences."""
    x = np.asarray(x, dtype=np.float32)
    if problem.truth is None:
        return x
    out = problem.truth.to_units(x)
    return out if shift else out - problem.truth.to_units(np.zeros((), np.float32))


def _image(problem, t: torch.Tensor) -> np.ndarray:
    """The first sample of a batch estimate (B, 1, H, W) as (H, W) or (D, H, W), normalised."""
    x = t.detach()[: problem.y.shape[0], 0].to("cpu", torch.float32).numpy()
    return x[0] if problem.squeeze else x


def _view(ev) -> torch.Tensor:
    """What to show of a step: the denoised estimate while a sampler runs, else the iterate."""
    return ev.denoised if ev.denoised is not None and not ev.done else ev.estimate


def _metrics(problem, x) -> dict[str, float]:
    if problem.truth is None:
        return {}
    out = {"psnr": metrics.psnr(x, problem.truth.x)}
    try:
        out["ssim"] = metrics.ssim(x, problem.truth.x)
    except InputError:  # smaller than the SSIM window
        pass
    return out


def _prior_info(prior) -> dict[str, Any]:
    return {k: prior.metadata.get(k) for k in ("name", "kind", "modality", "steps", "created",
                                                "source")}


def _load_prior(source, device):
    from ..priors import load_prior

    return load_prior(source, device=device)


def recon_updates(job: ReconJob, problem: api.Problem, cancel: CancelToken | None = None,
                  load_prior: Callable | None = None, pace: Pace | None = None
                  ) -> Iterator[Update]:
    """Run ``job`` on ``problem``, yielding :class:`Update` s (see the module docstring).

    ``load_prior(source, device)`` returns the prior object (default: load it every time);
    ``pace`` spaces the streamed estimates (default: every ``job.interval`` seconds).
    """
    tick = _Throttle(pace or Pace(job.interval))
    problem = on_device(problem, job.device)
    prior = None
    if api.needs_prior(job.method):
        if not job.prior:
            raise InputError(f"method {job.method!r} needs a prior: choose one in the Prior widget")
        prior = (load_prior or _load_prior)(job.prior, problem.op.device)
    params = dict(job.params)
    if job.samples > 1:
        yield from _ensemble_updates(job, problem, prior, params, cancel, tick)
        return
    if "seed" in {p.name for p in get_solver(job.method).params}:
        params["seed"] = job.seed
    used = api.method_params(problem, job.method, **params)
    t0, last = time.perf_counter(), None
    try:
        for last in api.iterate(problem, job.method, cancel=cancel, prior=prior, **params):
            if not last.done and tick() and not _cancelled(cancel):
                x = _image(problem, _view(last))
                yield Update("step", last.step, last.total, to_units(problem, x),
                             _metrics(problem, x))
    except Cancelled:
        if last is None:
            yield Update("cancelled", text="cancelled before the first step")
            return
        x = _image(problem, _view(last))
        report = api.make_report(problem, job.method, used, last, time.perf_counter() - t0, x)
        report.update(cancelled=True, partial=f"estimate after step {last.step} of {last.total}")
        yield Update("cancelled", last.step, last.total, to_units(problem, x), _metrics(problem, x),
                     report=report)
        return
    if last is None:
        raise JobError(f"method {job.method!r} yielded no step")
    x = _image(problem, last.estimate)
    report = api.make_report(problem, job.method, used, last, time.perf_counter() - t0, x)
    if prior is not None:
        report["prior"] = _prior_info(prior)
    yield Update("done", last.step, last.total, to_units(problem, x), _metrics(problem, x),
                 report=report)


def _ensemble_updates(job, problem, prior, params, cancel, tick) -> Iterator[Update]:
    params.pop("seed", None)
    used = {**api.method_params(problem, job.method, **params), "seed": job.seed}
    batch = job.batch or uncertainty.default_batch(job.samples, problem.y.shape[0], job.design)
    runs = math.ceil(job.samples / batch)
    truth = problem.truth.x if problem.truth is not None else None
    t0 = time.perf_counter()
    got: list[np.ndarray] = []
    last, pos, tot, nfe = None, 0, 0, 0

    def update(kind: str) -> Update:
        keep = len(got) - len(got) % 2 if job.design == "antithetic" else len(got)
        samples = to_units(problem, np.stack(got)) if got else None
        if keep < 2 or last is None:
            return Update(kind, pos, tot, samples=samples, text=f"{len(got)} samples")
        s = uncertainty.summarise(np.stack(got[:keep]), job.design, truth, level=job.level)
        maps = {"mean": to_units(problem, s.mean), "std": to_units(problem, s.std, shift=False),
                "lower": to_units(problem, s.lower), "upper": to_units(problem, s.upper)}
        if s.pair_correlation is not None and keep >= 6:  # with 2 pairs it is +-1 everywhere
            maps["pair correlation"] = s.pair_correlation
        report = api.make_report(problem, job.method, used, last, time.perf_counter() - t0,
                                 s.mean)
        report.update(s.report, nfe=nfe, batch=batch, samples_requested=job.samples)
        if prior is not None:
            report["prior"] = _prior_info(prior)
        live = {"psnr": s.report.get("psnr_mean"), "ssim": s.report.get("ssim_mean"),
                "coverage": s.report.get("coverage"), "mean_std": s.report["mean_std"]}
        return Update(kind, pos, tot, samples=samples, maps=maps, report=report,
                      metrics={k: v for k, v in live.items() if v is not None},
                      text=f"{len(got)} samples")

    try:
        for ev in uncertainty.ensemble(problem, job.method, prior=prior, samples=job.samples,
                                       design=job.design, batch=batch, seed=job.seed,
                                       cancel=cancel, **params):
            if isinstance(ev, uncertainty.SampleEvent):
                got.append(ev.sample)
                nfe = ev.nfe
                if not ev.done and (ev.index + 1) % batch == 0:  # a batch is complete
                    yield update("sample")
                continue
            last = ev
            pos, tot = ev.info["batch"] * ev.total + ev.step, runs * ev.total
            if not ev.done and tick() and not _cancelled(cancel):
                x = _image(problem, _view(ev))
                first = ev.info["samples"][0]
                yield Update("step", pos, tot, to_units(problem, x), _metrics(problem, x),
                             text=f"sample {first + 1} of {job.samples}, step {ev.step}/{ev.total}")
    except Cancelled:
        final = update("cancelled")
        x = None if last is None else _image(problem, _view(last))
        yield dataclasses.replace(final, image=None if x is None else to_units(problem, x),
                                  report={**final.report, "cancelled": True})
        return
    yield update("done")


# ------------------------------------------------------------------------------------------------
# training


def training_volumes(images, modality: str | None = None):
    """``[(name, array, metadata)]`` (2D images or 3D volumes in their own units) ->
    ``(list of TrainingVolume, modality)``; the modality defaults to the first image's."""
    from ..conventions import normalise
    from ..training import TrainingVolume

    if not images:
        raise InputError("choose at least one image layer to train on")
    vols = []
    for name, arr, meta in images:
        arr = np.asarray(arr)
        modality = modality or io.guess_modality(arr, meta)
        x, scale = normalise(arr, modality)
        vols.append(TrainingVolume(x, name, [], scale))
    return vols, modality


def train_updates(job: TrainJob, images, cancel: CancelToken | None = None,
                  pace: Pace | None = None) -> Iterator[Update]:
    """Train a prior on ``images`` (see :func:`training_volumes`), yielding :class:`Update` s
    (``metrics``: loss since the previous update, validation losses; final ``report``: the
    checkpoint metadata)."""
    from ..priors import read_metadata
    from ..training import train

    vols, modality = training_volumes(images, job.modality)
    sizes = tuple(int(p) for p in job.patch_sizes)
    if not sizes:
        raise InputError("give at least one training patch size")
    probs = (0.2, 0.3, 0.5) if sizes == (16, 32, 64) else (1 / len(sizes),) * len(sizes)
    kw = dict(config=job.config, patch_sizes=sizes, probs=probs, steps=job.steps,
              device=job.device, resume=job.resume, overwrite=job.overwrite, seed=job.seed,
              save_every=job.save_every, val_every=job.val_every, log_every=1,
              inference_patch_size=min(max(56, min(sizes)), max(sizes)))
    kw.update({k: v for k, v in (("batch", job.batch), ("pad", job.pad)) if v is not None})
    tick, losses, val, ev = _Throttle(pace or Pace(job.interval)), [], {}, None
    try:
        for ev in train(vols, modality, job.out, cancel=cancel, **kw):
            losses.append(ev.loss)
            if ev.val_losses:
                val = {f"val {s:g}": v for s, v in ev.val_losses.items()}
            if not ev.done and tick() and not _cancelled(cancel):
                yield Update("step", ev.step, ev.total, metrics={"loss": float(np.mean(losses)),
                                                                 **val})
                losses = []
    except Cancelled as exc:
        try:
            report = read_metadata(job.out)
        except InputError:
            report = {}
        yield Update("cancelled", 0 if ev is None else ev.step, job.steps, text=str(exc),
                     report=report)
        return
    if ev is None:
        raise JobError("training yielded no step")
    yield Update("done", ev.step, ev.total, metrics={"loss": float(np.mean(losses or [ev.loss])),
                                                     **val},
                 report=read_metadata(job.out), text=f"saved {ev.checkpoint or job.out}")


# ------------------------------------------------------------------------------------------------
# thread workers


def error_message(exc: BaseException) -> str:
    """A one-paragraph message for the user."""
    if isinstance(exc, (InputError, JobError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def guarded(updates: Iterator[Update]) -> Iterator[Update]:
    """``updates`` with every failure but bad input re-raised as :class:`JobError` (never a
    ``RuntimeError``, which superqt's worker would swallow); out of memory says what to do."""
    try:
        yield from updates
    except (InputError, JobError):
        raise
    except torch.cuda.OutOfMemoryError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise JobError(f"out of GPU memory ({first}): reconstruct one slice, draw fewer samples "
                       f"or a smaller batch, or use device cpu") from exc
    except MemoryError as exc:
        raise JobError("out of memory: reconstruct one slice, draw fewer samples or a smaller "
                       "batch") from exc
    except Exception as exc:  # torch errors are RuntimeErrors
        raise JobError(f"{type(exc).__name__}: {exc}") from exc


def _relay(updates):
    yield from updates


def start_worker(updates: Iterator[Update], desc: str = "", connect: dict | None = None,
                 activity: bool = True):
    """Run ``guarded(updates)`` on a napari thread worker; ``connect`` maps signal names
    (yielded, errored, aborted, finished) to slots. ``activity``: also show a progress bar in
    napari's activity dock (its animated indicator repaints the window while a job runs; with
    software OpenGL, e.g. Xvfb or a VM, that made CPU jobs ~4x slower, see
    benchmarks/results/gui_latency.md)."""
    from napari.qt.threading import create_worker

    worker = create_worker(_relay, guarded(updates), _progress={"desc": desc} if activity else None,
                           _ignore_errors=True, _start_thread=False)
    for name, slot in (connect or {}).items():
        getattr(worker, name).connect(slot)
    worker.start()
    return worker
