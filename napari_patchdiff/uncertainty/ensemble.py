"""Posterior ensembles from any sampler under an iid, antithetic or rqmc noise design.

:func:`ensemble` draws ``N`` posterior samples from a registered diffusion sampler and streams
each as it finishes; :class:`Accumulator` collects them (keeping antithetic pairs whole when a
run stops early) and summarises them; :func:`run_ensemble` does both to the end.

Noise designs (antithetic sampling for diffusion models: Jia et al., arXiv 2506.06185):

* ``iid``: sample ``k`` draws its whole noise stream from ``NoiseSource(sample_seed(seed, k))``;
* ``antithetic``: pair ``j`` = samples ``2j`` and ``2j + 1`` draw from ``NoiseSource(s_j)`` and
  its negation ``NoiseSource(s_j, antithetic=True)``: initial noise and every injected noise are
  negated, by the noise source, so no sampler has special code. Both members of a pair run in
  the same batch and see the same patch shifts.
* ``rqmc``: group ``j`` = samples ``4j .. 4j + 3`` draw from ``NoiseSource(s_j, group=4,
  member=i)``: an antithetic Latin hypercube (randomised quasi-Monte Carlo; see
  :mod:`napari_patchdiff.solvers.noise_source`). The group's noise sums to zero like a pair's
  and its magnitudes are stratified; groups are independent replicates.

Samples are batched: one sampler run draws ``batch`` samples (times the slices of a volume) at
once through a :class:`~napari_patchdiff.solvers.noise_source.StackedNoise`. The same seed,
design and batch size give the same ensemble. Batches are independent (:func:`plan_batches`,
:func:`run_batch`): they run as the items of an :class:`EnsembleWork` on an executor (see
:mod:`napari_patchdiff.recon.executors`), one after another here, or at once on a Ray cluster
(``cluster=``), which gives the same samples.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import InputError
from ..events import CancelToken, Drive, StepEvent
from ..recon.executors import Executor, Work
from ..recon.memory import check_ensemble_memory
from ..recon.problem import Problem
from ..recon.runs import method_params, resolve_prior
from ..solvers import SOLVERS, get_solver
from ..solvers.noise_source import DESIGNS, GROUP, NoiseSource, run_noise, sample_seed
from .calibration import resolve_calibration
from .regions import roi_mask
from .summaries import EnsembleResult, check_level, summarise

__all__ = ["DESIGNS", "GROUP", "BATCH_SLICES", "SampleEvent", "Accumulator", "Batch", "EnsembleWork",
           "default_batch", "plan_batches", "run_batch", "ensemble", "run_ensemble"]

#: default number of image slices per sampler run (samples x slices)
BATCH_SLICES = 8


@dataclass(frozen=True)
class SampleEvent:
    """One finished posterior sample.

    ``index`` is 0-based out of ``total``; ``sample`` is (H, W) or (D, H, W) on the normalised
    scale; ``pair``/``member`` say which antithetic pair or rqmc group and which member (None
    for iid);
    ``nfe`` counts the network evaluations of the ensemble so far (one per batched call).
    """

    index: int
    total: int
    sample: np.ndarray
    seed: int
    antithetic: bool
    pair: int | None
    member: int | None
    nfe: int
    seconds: float

    @property
    def done(self) -> bool:
        return self.index + 1 >= self.total


def _streams(samples: int, design: str, seed: int) -> list[tuple[int, bool, int | None, int | None]]:
    """(seed, antithetic, pair, member) of each sample."""
    if design == "iid":
        return [(sample_seed(seed, k), False, None, None) for k in range(samples)]
    if design == "antithetic":
        return [(sample_seed(seed, k // 2), bool(k % 2), k // 2, k % 2) for k in range(samples)]
    m = GROUP[design]
    return [(sample_seed(seed, k // m), False, k // m, k % m) for k in range(samples)]


def _source(design: str, seed: int, antithetic: bool, member: int | None, device,
            dtype) -> NoiseSource:
    if design == "rqmc":
        return NoiseSource(seed, False, device, dtype, group=GROUP[design], member=member)
    return NoiseSource(seed, antithetic, device, dtype)


def _check_design(samples: int, design: str) -> None:
    if design not in DESIGNS:
        raise InputError(f"unknown noise design {design!r}; choose one of: {', '.join(DESIGNS)}")
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise InputError(f"the number of samples must be a positive integer, got {samples!r}")
    m = GROUP[design]
    if samples % m:
        what = "pairs" if design == "antithetic" else f"groups of {m}"
        raise InputError(f"the {design} design draws {what}: the number of samples must be a "
                         f"multiple of {m}, got {samples}")


def default_batch(samples: int, slices: int, design: str) -> int:
    """Samples per sampler run: about :data:`BATCH_SLICES` slices, whole pairs or groups."""
    b = max(1, min(samples, BATCH_SLICES // max(1, slices)))
    m = GROUP.get(design, 1)
    return max(m, b - b % m)


@dataclass(frozen=True)
class Batch:
    """One sampler run of an ensemble: batch ``index`` draws samples ``start ..`` from
    ``streams`` ((seed, antithetic, pair, member) each; whole pairs or groups). Its results
    depend on these alone, not on where or after what it runs."""

    index: int
    start: int
    streams: tuple

    @property
    def samples(self) -> list[int]:
        return list(range(self.start, self.start + len(self.streams)))


def plan_batches(samples: int, design: str, seed: int, batch: int) -> list[Batch]:
    """The sampler runs of an ensemble (the same whichever executor runs them)."""
    streams = _streams(samples, design, seed)
    return [Batch(bi, start, tuple(streams[start:start + batch]))
            for bi, start in enumerate(range(0, samples, batch))]


def run_batch(spec, op, y, b: Batch, *, prior, design: str, seed: int, slices: int, volume,
              cancel=None, **used) -> Iterator[StepEvent]:
    """The step events of one batch's sampler run (the pure core of :func:`ensemble`: a
    local run and a cluster worker both call it)."""
    noise = run_noise([_source(design, s, a, m, op.device, op.dtype) for s, a, _, m in b.streams],
                      [slices] * len(b.streams), seed, b.index, op.device, op.dtype)
    yb = y.repeat(len(b.streams), *([1] * (y.ndim - 1)))
    return spec.run(op, yb, prior=prior, noise_source=noise, cancel=cancel, seed=seed,
                    volume=volume, **used)


def _check_batch(batch: int, design: str) -> None:
    if batch < 1 or batch % GROUP[design]:
        raise InputError(f"batch must be a positive number of samples (a multiple of "
                         f"{GROUP[design]} for the {design} design), got {batch}")


def ensemble(problem: Problem, method: str, *, prior, samples: int = 8, design: str = "iid",
             batch: int | None = None, seed: int = 0, cancel: CancelToken | None = None,
             adapt=None, cluster=None, precision: str | None = "auto",
             **params) -> Iterator[StepEvent | SampleEvent]:
    """Draw ``samples`` posterior samples of ``problem`` with the diffusion sampler ``method``.

    Yields the sampler's :class:`StepEvent` for every step of every batch (``info`` gains
    ``batch`` and ``samples``: which samples the batch draws) and one :class:`SampleEvent` per
    finished sample. ``params`` override the method's defaults (``seed`` is the ensemble's).
    ``adapt`` adapts the prior to the measurement (one adapter for the whole ensemble, trained
    during its first batches and then kept; see :mod:`napari_patchdiff.recon.adapt`).
    The cancel token is checked at every step (a cancel raises
    :class:`~napari_patchdiff.events.Cancelled`).

    ``cluster`` (see :func:`napari_patchdiff.recon.executors.resolve_executor`): None or "local"
    runs the batches here, one after another; "ray" or "ray:ADDRESS" (or a
    :class:`~napari_patchdiff.recon.executors.RayExecutor`) runs them on Ray workers at once. Then a
    batch's events come when it finishes, batches in the order they finish: one
    :class:`StepEvent` (its last step; ``info`` also has ``worker``, ``host``, ``device``) and
    its :class:`SampleEvent` s. The samples are the same as a local run's.
    """
    from ..recon.executors import resolve_executor

    _check_design(samples, design)
    spec = get_solver(method)
    if not spec.sampler:
        samplers = [n for n in SOLVERS.names() if SOLVERS.get(n).sampler]
        raise InputError(f"method {method!r} is not a posterior sampler; an ensemble needs one of "
                         f"{', '.join(samplers)}")
    executor = resolve_executor(cluster)
    executor.check_adaptation(adapt or getattr(prior, "adapting", False))
    prior = resolve_prior(problem, method, prior, adapt, precision)
    used = method_params(problem, method, **params)
    used.pop("seed", None)
    d = problem.slices  # slices of one sample
    batch = default_batch(samples, d, design) if batch is None else int(batch)
    _check_batch(batch, design)
    batches = plan_batches(samples, design, seed, batch)
    # samples, batch, image size and the workers on this machine scale the memory: refused
    # before sampling when over half of it
    check_ensemble_memory(prior, method, problem.image_shape, d, samples, batch,
                          executor.workers_here(len(batches)))
    work = EnsembleWork(problem, method, prior, design, seed, used)
    yield from _batch_events(problem, work, executor, batches, samples, cancel)


def _batch_events(problem: Problem, work: "EnsembleWork", executor: Executor,
                  batches: list[Batch], samples: int, cancel) -> Iterator:
    """:func:`ensemble`'s events from its batches on ``executor``: each step of a batch (here;
    on a cluster its last step, when it finishes), then the batch's samples."""
    d, nfe, t0, last = problem.slices, 0, time.perf_counter(), {}
    for item in executor.stream(work, batches, cancel):
        b = batches[item.position]
        ev = item.event
        if ev is not None:
            last[b.index] = ev
            yield StepEvent(ev.step, ev.total, ev.estimate, ev.denoised, nfe=nfe + ev.nfe,
                            info={**ev.info, "batch": b.index, "samples": b.samples})
        if item.finished:
            ev = last.pop(b.index)
            nfe += ev.nfe
            est = ev.estimate.detach().to("cpu").float().numpy()[:, 0]
            yield from _sample_events(b, est, d, samples, problem.squeeze, nfe,
                                      time.perf_counter() - t0)


def _sample_events(b: Batch, est: np.ndarray, d: int, total: int, squeeze: bool, nfe: int,
                   seconds: float) -> Iterator[SampleEvent]:
    for i, (s, a, pair, member) in enumerate(b.streams):
        x = est[i * d:(i + 1) * d]
        yield SampleEvent(b.start + i, total, x[0] if squeeze else x, s, a, pair, member, nfe,
                          seconds)


class EnsembleWork(Work):
    """An ensemble's batches as work for an executor (see :mod:`napari_patchdiff.recon.executors`):
    an item is a :class:`Batch`, its run :func:`run_batch`."""

    def __init__(self, problem: Problem, method: str, prior, design: str, seed: int, used):
        super().__init__(problem, prior)
        self.method, self.design, self.seed, self.used = method, design, int(seed), dict(used)
        self.slices = problem.slices
        self.what = f"method {method!r}"

    def solver(self, b: Batch, cancel: CancelToken | None = None) -> Iterator[StepEvent]:
        return run_batch(get_solver(self.method), self.op, self.y, b, prior=self.prior,
                         design=self.design, seed=self.seed, slices=self.slices,
                         volume=self.volume, cancel=cancel, **self.used)


class Accumulator:
    """The finished samples of an ensemble, as they arrive (in any order: a cluster returns
    batches as they finish; they are kept in sample order).

    :attr:`usable` is how many can be summarised: all of them for iid, whole pairs or groups
    only for the antithetic and rqmc designs (a lone member would bias the group-mean
    estimators), so a run stopped early keeps every complete pair or group and nothing else.
    """

    def __init__(self, design: str, calibration=None, interval_note: str = "sample quantiles"):
        self.design = design
        self.calibration, self.interval_note = calibration, interval_note
        self._by_index: dict[int, np.ndarray] = {}
        self.nfe = 0

    def add(self, event: SampleEvent) -> None:
        if event.index in self._by_index:
            raise RuntimeError(f"sample {event.index} arrived twice")
        self._by_index[event.index] = event.sample
        self.nfe = event.nfe

    def __len__(self) -> int:
        return len(self._by_index)

    @property
    def samples(self) -> list[np.ndarray]:
        """Every sample that arrived, in sample order."""
        return [self._by_index[k] for k in sorted(self._by_index)]

    def _usable_indices(self) -> list[int]:
        m = GROUP[self.design]
        groups: dict[int, int] = {}
        for k in self._by_index:
            groups[k // m] = groups.get(k // m, 0) + 1
        return sorted(k for k in self._by_index if groups[k // m] == m)

    @property
    def usable(self) -> int:
        return len(self._usable_indices())

    @property
    def indices(self) -> list[int]:
        """The sample indices :meth:`stack` returns (usable ones)."""
        return self._usable_indices()

    def stack(self, usable_only: bool = True) -> np.ndarray:
        """The samples ``(N, ...)`` in sample order (the usable ones, or all that arrived)."""
        keys = self._usable_indices() if usable_only else sorted(self._by_index)
        return np.stack([self._by_index[k] for k in keys])

    def summary(self, truth=None, roi=None, level: float = 0.9) -> EnsembleResult | None:
        """:func:`summarise` of the usable samples, or None if fewer than two."""
        if self.usable < 2:
            return None
        return summarise(self.stack(), self.design, truth, roi, level, self.calibration,
                         self.interval_note)


def run_ensemble(problem: Problem, method: str, *, prior, samples: int = 8, design: str = "iid",
                 batch: int | None = None, seed: int = 0, roi=None, level: float = 0.9,
                 cancel: CancelToken | None = None,
                 on_event: Callable[[Any], None] | None = None, adapt=None,
                 calibration="auto", cluster=None, precision: str | None = "auto",
                 **params) -> EnsembleResult:
    """Run :func:`ensemble` to the end and summarise it (with the truth if known).

    ``precision``: the network's, "auto" (the default: bfloat16 where the device multiplies it
    natively, else float32), "float32" or "bfloat16" (None: the prior's own; see
    :mod:`napari_patchdiff.priors.precision`).

    ``cluster``: where the batches run (None or "local": here; "ray", "ray:ADDRESS" or a
    :class:`~napari_patchdiff.recon.executors.RayExecutor`: on Ray workers, with the same samples);
    the report's ``executor`` says which.

    ``calibration`` chooses the per-pixel bounds (see
    :func:`~napari_patchdiff.uncertainty.calibration.resolve_calibration`): ``"auto"`` uses a
    shipped calibration where one applies, else the sample quantiles.

    On a cancel the exception carries ``exc.partial``: the summary of the samples finished so far
    (whole pairs or groups), or None if fewer than two.
    """
    if isinstance(samples, (int, np.integer)) and not isinstance(samples, bool) and samples < 2:
        raise InputError(f"an ensemble summary needs at least two samples, got {samples}")
    level = check_level(level)  # everything the summary needs is checked before sampling
    from ..recon.executors import resolve_executor

    executor = resolve_executor(cluster)
    if roi is not None:
        roi_mask(roi, problem.image_shape)
    t0 = time.perf_counter()
    truth = problem.truth.x if problem.truth is not None else None
    prior = resolve_prior(problem, method, prior, adapt, precision)
    acc = Accumulator(design, *resolve_calibration(
        calibration, problem=problem, method=method, prior=prior,
        params=method_params(problem, method, **params), samples=samples, level=level))

    def partial(last) -> EnsembleResult | None:  # the whole pairs or groups finished so far
        out = acc.summary(truth, roi, level)
        if out is not None:
            out.report.update(cancelled=True, seconds=time.perf_counter() - t0,
                              sample_indices=acc.indices, executor=executor.describe())
        return out

    with Drive(ensemble(problem, method, prior=prior, samples=samples, design=design,
                        batch=batch, seed=seed, cancel=cancel, cluster=executor,
                        precision=None, **params),
               partial, what=f"method {method!r}") as drive:
        for ev in drive:
            if isinstance(ev, SampleEvent):
                acc.add(ev)
            if on_event is not None:
                on_event(ev)
    batch = batch or default_batch(samples, problem.slices, design)
    return _reported(acc.summary(truth, roi, level), problem, prior, executor, method=method,
                     seed=seed, batch=batch, nfe=acc.nfe,
                     precision=getattr(prior, "precision", "float32"),
                     precision_reason=getattr(prior, "precision_reason", "the prior's own"),
                     seconds=round(time.perf_counter() - t0, 3),
                     nfe_per_sample=acc.nfe / math.ceil(samples / batch))


def _reported(result: EnsembleResult, problem: Problem, prior, executor: Executor,
              **facts) -> EnsembleResult:
    """``result`` with the run's ``facts`` in its report, and the slice, the executor (on a
    cluster) and the adaptation where they apply."""
    result.report.update(facts)
    if problem.slice_index is not None:  # one slice of a volume or a measurement stack
        result.report["slice"] = problem.slice_index
    if executor.remote:
        result.report["executor"] = executor.describe()
    if getattr(prior, "adapting", False):
        result.report["adaptation"] = prior.summary()
    return result
