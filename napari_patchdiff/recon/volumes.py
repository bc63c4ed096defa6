"""Volumes of any depth in bounded memory: windows of slices, with overlap, streamed as they finish.

A volume deeper than ``batch`` slices is reconstructed window by window: each window of at most
``batch`` slices (plus ``overlap`` slices of context on each side, which couple it to its
neighbours when the method couples slices along z, and whose results are dropped) is one run of
the method, so the working memory is that of a window whatever the depth; only the volume's own
estimate (the direct reconstruction at first, then each window's result as it finishes) is
kept whole. Every step event carries that whole estimate, so a viewer shows the volume filling
in, and a cancel keeps every finished slice (``info["finished"]`` lists them).

Each slice draws its noise from its own stream (``sample_seed(seed, slice)``), so a slice-wise
method gives the same slice whatever the window it runs in, and window ``k`` seeds its prior's
generator from run ``k`` (:func:`~napari_patchdiff.solvers.noise_source.run_noise`), so a
window gives the same slices whichever executor runs it (:mod:`napari_patchdiff.recon.executors`:
here, step by step, or on a cluster's workers, window by window as they finish).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from ..errors import InputError
from ..events import Cancelled, CancelToken, StepEvent
from ..solvers import Volume, get_solver
from ..solvers.noise_source import NoiseSource, run_noise, sample_seed
from .executors import Executor, Work
from .problem import Problem

__all__ = ["Window", "windows", "VOLUME_BATCH", "VolumeWork", "iterate_volume"]

#: slices per window by default (about what the samplers batch at once elsewhere)
VOLUME_BATCH = 8


@dataclass(frozen=True)
class Window:
    """Slices ``start:stop`` are computed, ``keep_start:keep_stop`` kept (the rest is context)."""

    start: int
    stop: int
    keep_start: int
    keep_stop: int


def windows(depth: int, batch: int, overlap: int = 0) -> list[Window]:
    """Windows covering ``depth`` slices, ``batch`` kept slices each, ``overlap`` context
    slices on each side where the volume continues."""
    if batch < 1 or overlap < 0:
        raise InputError(f"a window needs batch >= 1 and overlap >= 0, got {batch}, {overlap}")
    out = []
    for keep_start in range(0, depth, batch):
        keep_stop = min(depth, keep_start + batch)
        out.append(Window(max(0, keep_start - overlap), min(depth, keep_stop + overlap),
                          keep_start, keep_stop))
    return out


class VolumeWork(Work):
    """A reconstruction as work for an executor (see :mod:`napari_patchdiff.recon.executors`). An
    item is None (the whole problem in one run) or ``(k, window)``: window ``k`` of
    :func:`windows`, a run on the window's slices with one noise stream per slice (seeded by
    the slice index) and the prior's seeded by the window index, so its slices are the same
    wherever it runs. An adapting prior adapts to each window's measurement in turn."""

    def __init__(self, problem: Problem, method: str, prior, params: dict, seed: int):
        super().__init__(problem, prior)
        self.method, self.params, self.seed = method, dict(params), int(seed)
        self.noise_std = problem.noise_std
        self.what = f"method {method!r}"

    def solver(self, item, cancel: CancelToken | None = None) -> Iterator[StepEvent]:
        spec = get_solver(self.method)
        objects = {} if self.prior is None else {"prior": self.prior}
        if item is None:
            return spec(self.op, self.y, noise_std=self.noise_std, cancel=cancel,
                        volume=self.volume, **objects, **self.params)
        k, w = item
        y = self.y[w.start:w.stop]
        if getattr(self.prior, "adapting", False):
            self.prior.focus(y)
        depth = w.stop - w.start
        if "noise_source" in spec.objects:
            dev, dt = self.op.device, self.op.dtype
            objects["noise_source"] = run_noise(
                [NoiseSource(sample_seed(self.seed, i), False, dev, dt)
                 for i in range(w.start, w.stop)], [1] * depth, self.seed, k, dev, dt)
        spacing, pixel = ((self.volume.spacing, self.volume.pixel) if self.volume is not None
                          else (None, None))
        return spec(self.op, y, noise_std=self.noise_std, cancel=cancel,
                    volume=Volume(depth, spacing, pixel) if depth >= 2 else None, **objects,
                    **self.params)


def iterate_volume(problem: Problem, work: VolumeWork, executor: Executor, items: list,
                   cancel: CancelToken | None = None) -> Iterator[StepEvent]:
    """The step events of ``work``'s ``items`` on ``executor``. One item None (the whole
    problem in one run): its run's own events. Windows ``(k, window)``: events whose
    ``estimate`` is the whole volume ``(D, 1, H, W)`` so far (the direct reconstruction where
    no window has reached yet) and whose ``info`` has ``window`` (start, stop), ``finished``
    (the slices done) and the window's own step, one per step here and one per finished
    window on a cluster (windows in the order they finish). On a cancel the raised
    :class:`Cancelled` carries the whole volume so far as its ``estimate``."""
    if items == [None]:
        for item in executor.stream(work, items, cancel):
            if item.event is not None:
                yield item.event
        return
    depth = problem.slices
    with torch.no_grad():
        volume = problem.op.initial(problem.y).to(problem.op.dtype)
    finished: list[int] = []
    step, nfe, total, last = 0, 0, None, {}
    try:
        for item in executor.stream(work, items, cancel):
            k, w = items[item.position]
            kept = list(range(w.keep_start, w.keep_stop))
            ev = item.event
            if ev is not None:
                total = total or ev.total * len(items)
                keep = slice(w.keep_start - w.start, w.keep_stop - w.start)
                volume[w.keep_start:w.keep_stop] = ev.estimate[keep].to(volume.dtype)
                step += ev.step - (last[k].step if k in last else 0)
                last[k] = ev
                done = sorted(finished + kept) if ev.done or item.finished else list(finished)
                yield StepEvent(step, total, volume, None, nfe=nfe + ev.nfe, info={
                    **ev.info, "window": (w.start, w.stop), "window_step": ev.step,
                    "finished": done})
            if item.finished:
                nfe += last.pop(k).nfe
                finished = sorted(finished + kept)
    except Cancelled as exc:
        raise Cancelled(f"cancelled with {len(finished)} of {depth} slices finished",
                        volume) from exc
