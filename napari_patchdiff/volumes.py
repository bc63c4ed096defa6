"""Volumes of any depth in bounded memory: windows of slices, with overlap, streamed as they finish.

A volume deeper than ``batch`` slices is reconstructed window by window: each window of at most
``batch`` slices (plus ``overlap`` slices of context on each side, which couple it to its
neighbours when the method couples slices along z, and whose results are dropped) is one run of
the method, so the working memory is that of a window whatever the depth; only the volume's own
estimate (the direct reconstruction at first, then each window's result as it finishes) is
kept whole. Every step event carries that whole estimate, so a viewer shows the volume filling
in, and a cancel keeps every finished slice (``info["finished"]`` lists them).

Each slice draws its noise from its own stream (``sample_seed(seed, slice)``), so a slice-wise
method gives the same slice whatever the window it runs in.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator

import torch

from .errors import InputError
from .events import Cancelled, CancelToken, StepEvent
from .noise_source import NoiseSource, StackedNoise, sample_seed
from .problem import Problem

__all__ = ["Window", "windows", "VOLUME_BATCH", "iterate_volume"]

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


def _part(problem: Problem, w: Window) -> Problem:
    truth = problem.truth
    if truth is not None:
        truth = dataclasses.replace(truth, x=truth.x[w.start:w.stop])
    return dataclasses.replace(problem, y=problem.y[w.start:w.stop], truth=truth)


def iterate_volume(problem: Problem, run, *, batch: int, overlap: int, seed: int = 0,
                   cancel: CancelToken | None = None) -> Iterator[StepEvent]:
    """Run ``run(part, noise_source) -> step generator`` window by window over ``problem``'s
    slices (see the module docstring); yields step events whose ``estimate`` is the whole
    volume ``(D, 1, H, W)`` so far and whose ``info`` has ``window`` (start, stop),
    ``finished`` (the slices done) and the window's own step. On a cancel the raised
    :class:`Cancelled` carries the whole volume so far as its ``estimate``."""
    depth = problem.slices
    parts = windows(depth, batch, overlap)
    with torch.no_grad():
        volume = problem.op.initial(problem.y).to(problem.op.dtype)
    finished: list[int] = []
    step, nfe, total = 0, 0, None
    for k, w in enumerate(parts):
        part = _part(problem, w)
        streams = [NoiseSource(sample_seed(seed, i), False, problem.op.device, problem.op.dtype)
                   for i in range(w.start, w.stop)]
        noise = StackedNoise(streams, [1] * len(streams), prior_seed=sample_seed(seed, 10**6 + k),
                             device=problem.op.device, dtype=problem.op.dtype)
        keep = slice(w.keep_start - w.start, w.keep_stop - w.start)
        last_nfe = 0
        try:
            for ev in run(part, noise):
                total = total or ev.total * len(parts)
                volume[w.keep_start:w.keep_stop] = ev.estimate[keep].to(volume.dtype)
                step += 1
                last_nfe = ev.nfe
                done = finished + (list(range(w.keep_start, w.keep_stop)) if ev.done else [])
                yield StepEvent(step, total, volume, None, nfe=nfe + ev.nfe, info={
                    **ev.info, "window": (w.start, w.stop), "window_step": ev.step,
                    "finished": done})
        except Cancelled as exc:
            raise Cancelled(f"cancelled with {len(finished)} of {depth} slices finished",
                            volume) from exc
        nfe += last_nfe
        finished.extend(range(w.keep_start, w.keep_stop))
        if cancel is not None and k + 1 < len(parts):
            cancel.check(volume)
