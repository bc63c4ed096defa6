"""Background jobs as Qt-free generators of typed updates, for the GUI and for scripts.

A widget snapshots its inputs on the main thread into a frozen :class:`ReconJob` or
:class:`TrainJob`. :func:`recon_updates` and :func:`train_updates` drive the core generators
(:func:`~napari_patchdiff.recon.runs.iterate`, :func:`~napari_patchdiff.uncertainty.ensemble`,
:func:`~napari_patchdiff.training.train`) and yield :class:`Update` messages that hold numpy
arrays only (tensors are converted in the worker), at most a few per second (:class:`Pace`);
the last one (:attr:`UpdateKind.DONE` or :attr:`UpdateKind.CANCELLED`) always comes. Nothing
here imports Qt: the napari layer runs these on a thread worker
(:mod:`napari_patchdiff._qt.workers`), benchmarks and tests drive them in their own thread.

Kept as one module: it is the one protocol between a widget and its worker thread (a frozen
job in, :class:`Update` s out, paced by :class:`Pace`, the last update always coming) and its
two implementations, reconstruction (with an ensemble's progress and the bounds advice that
the same job would get) and training; each job is a few functions that share the update
types, the pacing and the conversion to display units.
"""
from __future__ import annotations

import dataclasses
import enum
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..errors import InputError, JobError
from ..events import Cancelled, CancelToken, Drive, StepEvent
from ..recon import metrics
from ..recon.problem import Problem
from ..recon.runs import make_report, method_params, needs_prior, to_array
from ..uncertainty import Accumulator, SampleEvent, default_batch, ensemble
from ..uncertainty.calibration import resolve_calibration

__all__ = ["UpdateKind", "Update", "Pace", "ReconJob", "TrainJob", "recon_updates",
           "train_updates", "to_units", "devices", "error_message", "bounds_advice",
           "step_text"]


class UpdateKind(str, enum.Enum):
    """What an :class:`Update` carries (a ``str`` enum: ``UpdateKind.DONE == "done"``)."""

    STEP = "step"            #: an intermediate estimate, or a training step
    SAMPLE = "sample"        #: a batch of posterior samples finished
    DONE = "done"            #: the job finished (always the last update, or CANCELLED)
    CANCELLED = "cancelled"  #: the job stopped at a cancel, with its partial result

    @property
    def final(self) -> bool:
        return self in (UpdateKind.DONE, UpdateKind.CANCELLED)


@dataclass(frozen=True)
class Update:
    """One message from a job to the main thread.

    kind : see :class:`UpdateKind`.
    step, total : progress of the whole job (all batches of an ensemble).
    image : the current estimate in display units (the truth's units when known).
    metrics : live values (psnr, ssim against the truth; loss when training).
    samples : the finished samples so far (N, ...), display units.
    maps : ensemble summaries in display units: mean, std, "lower/upper (sample quantile)",
        "lower/upper (calibrated)" where a calibration applies, and (antithetic, at least 3
        pairs) the per-pixel within-pair correlation.
    report : provenance (the run's report / the ensemble summary; prior metadata).
    prior : with test-time adaptation, the adapted prior (``prior.save(path)``), in the final
        update.
    """

    kind: UpdateKind
    step: int = 0
    total: int = 0
    image: np.ndarray | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    samples: np.ndarray | None = None
    maps: dict[str, np.ndarray] | None = None
    report: dict[str, Any] = field(default_factory=dict)
    text: str = ""
    prior: Any = None

    def __post_init__(self):
        object.__setattr__(self, "kind", UpdateKind(self.kind))


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
    adapt: Any = None  # test-time adaptation: None, True or a dict of its parameters
    calibration: Any = "auto"  # per-pixel bounds: "auto", None or a calibration file
    cluster: Any = None  # where batches/windows run: None/"local", "ray", "ray:ADDRESS"
    precision: str | None = "auto"  # the prior network's: auto, float32 or bfloat16


@dataclass(frozen=True)
class TrainJob:
    """Training a prior on image layers: where to save it (``out``), every training option
    (``config``; its modality None: that of the first layer, see
    :func:`napari_patchdiff.training.training_volumes`) and the seconds between streamed
    updates."""

    out: str
    config: Any  # napari_patchdiff.training.TrainConfig
    interval: float = 0.25


class Pace:
    """How often a job streams an update: every ``minimum`` seconds at most, and, if
    ``max_load`` is set, rarely enough that showing the updates (``cost`` seconds each, measured
    by the main thread) takes at most that fraction of the main thread's time. The worker reads
    it, the main thread updates ``cost``."""

    def __init__(self, minimum: float = 0.25, max_load: float | None = None):
        self.minimum, self.max_load, self.cost = float(minimum), max_load, 0.0
        self._last = -math.inf

    @property
    def interval(self) -> float:
        return max(self.minimum, self.cost / self.max_load if self.max_load else 0.0)

    def measured(self, seconds: float) -> None:
        self.cost = seconds if not self.cost else 0.5 * (self.cost + seconds)

    def due(self, cancel: CancelToken | None = None) -> bool:
        """Whether the worker should stream now (never once a cancel is asked for: the final
        update follows at once)."""
        now = time.perf_counter()
        if (cancel is not None and cancel.cancelled) or now - self._last < self.interval:
            return False
        self._last = now
        return True


def devices() -> list[str]:
    """The torch devices to offer: cpu and each CUDA device torch sees."""
    return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def error_message(exc: BaseException) -> str:
    """A one-paragraph message for the user."""
    if isinstance(exc, (InputError, JobError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


# ------------------------------------------------------------------------------------------------
# reconstruction


def to_units(problem: Problem, x, shift: bool = True) -> np.ndarray:
    """Normalised values in display units (the truth's); ``shift=False`` for differences."""
    x = np.asarray(x, dtype=np.float32)
    if problem.truth is None:
        return x
    return problem.truth.to_units(x) if shift else x * np.float32(problem.truth.unit_scale)


def _view(ev: StepEvent) -> torch.Tensor:
    """What to show of a step: the denoised estimate while a sampler runs, else the iterate."""
    return ev.denoised if ev.denoised is not None and not ev.done else ev.estimate


def _metrics(problem: Problem, x, ev: StepEvent | None = None) -> dict[str, float]:
    out = {} if ev is None or "adapt_loss" not in ev.info else {"adapt loss": ev.info["adapt_loss"]}
    if problem.truth is None:
        return out
    out["psnr"] = metrics.psnr(x, problem.truth.x)
    try:
        out["ssim"] = metrics.ssim(x, problem.truth.x)
    except InputError:  # smaller than the SSIM window
        pass
    return out


def _load_prior(source, device):
    from ..priors import load_prior

    return load_prior(source, device=device)


def _job_prior(job: ReconJob, problem: Problem, load_prior: Callable):
    """The prior ``job`` runs with (None for a classical method), checked against ``problem``
    and wrapped when the job adapts it (:func:`~napari_patchdiff.recon.runs.resolve_prior`)."""
    from ..recon.runs import resolve_prior

    prior = None
    if needs_prior(job.method):
        if not job.prior:
            raise InputError(f"method {job.method!r} needs a prior: choose one in the Prior widget")
        prior = load_prior(job.prior, problem.op.device)
    return resolve_prior(problem, job.method, prior, job.adapt, job.precision)


def recon_updates(job: ReconJob, problem: Problem, cancel: CancelToken | None = None,
                  load_prior: Callable | None = None, pace: Pace | None = None
                  ) -> Iterator[Update]:
    """Run ``job`` on ``problem``, yielding :class:`Update` s (see the module docstring).

    ``load_prior(source, device)`` returns the prior object (default: load it every time);
    ``pace`` spaces the streamed estimates (default: every ``job.interval`` seconds).
    """
    from ..recon.executors import resolve_executor
    from ..recon.runs import iterate

    pace = pace or Pace(job.interval)
    executor = resolve_executor(job.cluster)  # a bad cluster is an error before any work
    if executor.remote:
        job = dataclasses.replace(job, cluster=executor)
    problem = problem.to(job.device)
    prior = _job_prior(job, problem, load_prior or _load_prior)
    if job.samples > 1:
        yield from _ensemble_updates(job, problem, prior, cancel, pace)
        return
    params = method_params(problem, job.method, **job.params)
    if "seed" in params:
        params["seed"] = job.seed
    t0 = time.perf_counter()

    def cancelled(last) -> Update:  # the last step shown, with its report
        if last is None:
            return Update(UpdateKind.CANCELLED, text="cancelled before the first step")
        x = to_array(problem, _view(last))
        report = make_report(problem, job.method, params, last, time.perf_counter() - t0, x,
                             prior)
        report.update(cancelled=True, partial=f"estimate after step {last.step} of {last.total}")
        return Update(UpdateKind.CANCELLED, last.step, last.total, to_units(problem, x),
                      _metrics(problem, x), report=report)

    drive = Drive(iterate(problem, job.method, cancel=cancel, prior=prior, cluster=job.cluster,
                          precision=None, **params),
                  cancelled, what=f"method {job.method!r}", error=JobError)
    try:
        with drive:
            for ev in drive:
                if not ev.done and pace.due(cancel):
                    x = to_array(problem, _view(ev))
                    yield Update(UpdateKind.STEP, ev.step, ev.total, to_units(problem, x),
                                 _metrics(problem, x, ev), text=step_text(ev, problem.slices))
    except Cancelled as exc:
        yield exc.partial
        return
    last = drive.final()
    x = to_array(problem, last.estimate)
    report = make_report(problem, job.method, params, last, time.perf_counter() - t0, x, prior)
    if executor.remote:
        report["executor"] = executor.describe()
    yield Update(UpdateKind.DONE, last.step, last.total, to_units(problem, x),
                 _metrics(problem, x, last), report=report,
                 prior=prior if getattr(prior, "adapting", False) else None)


def step_text(ev: StepEvent, slices: int = 1, batches: int = 0, samples: int = 0) -> str:
    """What a step is part of, for a status line: the batch of an ensemble (its samples run
    at once), the window of a volume, adaptation; e.g. "batch 1 of 2 (4 samples at once),
    step 3/10"."""
    info = ev.info or {}
    parts = []
    if batches:
        n = len(info.get("samples", ())) or samples
        parts.append(f"batch {info.get('batch', 0) + 1} of {batches} ({n} of {samples} samples "
                     f"at once)")
    if "window" in info:
        a, b = info["window"]
        parts.append(f"slices {a + 1}-{b} of {slices}")
    elif slices > 1:
        parts.append(f"all {slices} slices at once")
    step = f"step {ev.step}/{ev.total}"
    if "window_step" in info and ev.total:
        step = f"step {ev.step}/{ev.total} of the volume"
    parts.append(step)
    if "adapt_loss" in info:
        parts.append("adapting the prior")
    return ", ".join(parts)


@dataclass
class _EnsembleProgress:
    """An ensemble job so far (its samples, its last step shown, its steps of the whole job) and
    the :class:`Update` that shows it."""

    job: ReconJob
    problem: Problem
    prior: Any
    used: dict
    batch: int
    acc: Accumulator
    t0: float = field(default_factory=time.perf_counter)
    last: StepEvent | None = None
    pos: int = 0
    tot: int = 0

    def update(self, kind: UpdateKind) -> Update:
        job, problem, acc, last = self.job, self.problem, self.acc, self.last
        samples = to_units(problem, acc.stack(usable_only=False)) if len(acc) else None
        truth = problem.truth.x if problem.truth is not None else None
        s = acc.summary(truth, level=job.level) if last is not None else None
        if s is None:
            return Update(kind, self.pos, self.tot, samples=samples, text=f"{len(acc)} samples")
        maps = {"mean": to_units(problem, s.mean), "std": to_units(problem, s.std, shift=False)}
        if s.calibrated:
            maps.update({"lower (calibrated)": to_units(problem, s.lower),
                         "upper (calibrated)": to_units(problem, s.upper)})
        maps.update({"lower (sample quantile)": to_units(problem, s.lower_quantile),
                     "upper (sample quantile)": to_units(problem, s.upper_quantile)})
        if s.pair_correlation is not None and acc.usable >= 6:  # 2 pairs: +-1 everywhere
            maps["pair correlation"] = s.pair_correlation
        report = make_report(problem, job.method, self.used, last, time.perf_counter() - self.t0,
                             s.mean, self.prior)
        report.update(s.report, nfe=acc.nfe, batch=self.batch, samples_requested=job.samples)
        if getattr(job.cluster, "remote", False):
            report["executor"] = job.cluster.describe()
        live = {"psnr": s.report.get("psnr_mean"), "ssim": s.report.get("ssim_mean"),
                "coverage": s.report.get("coverage"), "mean_std": s.report["mean_std"]}
        return Update(kind, self.pos, self.tot, samples=samples, maps=maps, report=report,
                      metrics={k: v for k, v in live.items() if v is not None},
                      text=f"{len(acc)} samples")

    def cancelled(self, _=None) -> Update:
        """The samples so far and the last step shown (:class:`~napari_patchdiff.events.Drive`'s
        partial result of a cancelled ensemble job)."""
        final = self.update(UpdateKind.CANCELLED)
        x = (None if self.last is None
             else to_units(self.problem, to_array(self.problem, _view(self.last))))
        return dataclasses.replace(final, image=x, report={**final.report, "cancelled": True})


def _ensemble_updates(job: ReconJob, problem: Problem, prior, cancel, pace) -> Iterator[Update]:
    params = {k: v for k, v in job.params.items() if k != "seed"}
    used = {**method_params(problem, job.method, **params), "seed": job.seed}
    batch = job.batch or default_batch(job.samples, problem.slices, job.design)
    runs = math.ceil(job.samples / batch)
    calibration = resolve_calibration(job.calibration, problem=problem, method=job.method,
                                      prior=prior, params=used, samples=job.samples,
                                      level=job.level)
    acc = Accumulator(job.design, *calibration)
    now, steps = _EnsembleProgress(job, problem, prior, used, batch, acc), {}
    try:
        with Drive(ensemble(problem, job.method, prior=prior, samples=job.samples,
                            design=job.design, batch=batch, seed=job.seed, cancel=cancel,
                            cluster=job.cluster, **params), now.cancelled) as drive:
            for ev in drive:
                if isinstance(ev, SampleEvent):
                    acc.add(ev)
                    if len(acc) < job.samples and len(acc) % batch == 0:  # a batch is complete
                        yield now.update(UpdateKind.SAMPLE)
                    continue
                now.last = ev
                steps[ev.info["batch"]] = ev.step  # batches may finish in any order on a cluster
                now.pos, now.tot = sum(steps.values()), runs * ev.total
                if not ev.done and pace.due(cancel):
                    x = to_array(problem, _view(ev))
                    yield Update(UpdateKind.STEP, now.pos, now.tot, to_units(problem, x),
                                 _metrics(problem, x, ev),
                                 text=step_text(ev, problem.slices, runs, job.samples))
    except Cancelled as exc:
        yield exc.partial
        return
    yield now.update(UpdateKind.DONE)


def bounds_advice(problem: Problem, method: str, prior: str | None, params: dict | None = None,
                  samples: int = 1, calibration: Any = "auto", adapt: bool = False,
                  level: float = 0.9) -> tuple[str, dict[str, Any]]:
    """Which per-pixel bounds an ensemble with these settings would show, and why (a sentence),
    before it runs; and, where none applies but a shipped calibration would with another budget
    or ensemble size, those settings (e.g. ``{"nfe": 50, "samples": 8}``; else ``{}``).
    ``prior``: the prior's source (name or path), read for its identity only; ``adapt``: the
    prior is adapted to the measurement (no shipped calibration fits an adapted prior)."""
    from types import SimpleNamespace

    from ..priors import read_metadata, shipped_priors
    from ..uncertainty.calibration import shaping_params, shipped_calibrations

    meta = dict(read_metadata(shipped_priors().get(prior, prior))) if prior else {}
    if adapt:
        meta["adapted_from"] = meta.get("name")
    ident = SimpleNamespace(metadata=meta)
    used = method_params(problem, method, **(params or {}))
    try:
        found, why = resolve_calibration(calibration, problem=problem, method=method,
                                         prior=ident, params=used, samples=samples,
                                         level=level)
    except InputError as exc:
        return f"the run would stop: {exc}", {}
    if found is not None or calibration != "auto":
        return why, {}
    shaping = shaping_params(used)
    for c in shipped_calibrations():
        change = {k: v for k, v in c.method_params.items() if k in shaping and shaping[k] != v}
        if samples < c.samples:
            change["samples"] = c.samples
        try:
            resolve_calibration([c], problem=problem, method=method, prior=ident,
                                params={**used, **change}, samples=max(samples, c.samples),
                                level=level)
        except InputError:  # it does not apply whatever the budget
            continue
        if change:
            return why, change
    return why, {}


# ------------------------------------------------------------------------------------------------
# training


def train_updates(job: TrainJob, images, cancel: CancelToken | None = None,
                  pace: Pace | None = None) -> Iterator[Update]:
    """Train a prior on ``images`` (``[(name, array, metadata)]``: 2D images or 3D volumes in
    their own units, see :func:`napari_patchdiff.training.training_volumes`), yielding
    :class:`Update` s (``metrics``: loss since the previous update, validation losses, the
    memorisation gap; final ``report``: the checkpoint metadata)."""
    from ..priors import read_metadata
    from ..training import train

    if not images:
        raise InputError("choose at least one image layer to train on")
    pace = pace or Pace(job.interval)
    losses, val, ev = [], {}, None
    try:
        for ev in train(images, job.out, job.config, cancel=cancel):
            losses.append(ev.loss)
            if ev.val_losses:
                val = {f"val {s:g}": v for s, v in ev.val_losses.items()}
            if ev.memorisation:
                val["memorisation gap"] = ev.memorisation["gap"]
            if not ev.done and pace.due(cancel):
                yield Update(UpdateKind.STEP, ev.step, ev.total,
                             metrics={"loss": float(np.mean(losses)), **val})
                losses = []
    except Cancelled as exc:
        try:
            report = read_metadata(job.out)
        except InputError:
            report = {}
        yield Update(UpdateKind.CANCELLED, 0 if ev is None else ev.step, job.config.steps,
                     text=str(exc), report=report)
        return
    if ev is None:
        raise JobError("training yielded no step")
    yield Update(UpdateKind.DONE, ev.step, ev.total,
                 metrics={"loss": float(np.mean(losses or [ev.loss])), **val},
                 report=read_metadata(job.out),
                 text=f"saved {ev.checkpoint or job.out}" + (
                     f"; stopped early: {ev.early_stop['reason']}" if ev.early_stop else ""))
