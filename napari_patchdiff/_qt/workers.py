"""Running a job generator (:mod:`napari_patchdiff.plugin.jobs`) on a napari thread worker."""
from __future__ import annotations

from typing import Iterator

import torch

from ..errors import InputError, JobError
from ..plugin.jobs import Update

__all__ = ["guarded", "start_worker"]


def guarded(updates: Iterator[Update]) -> Iterator[Update]:
    """``updates`` with every failure but bad input re-raised as :class:`JobError` (never a
    ``RuntimeError``: superqt's generator worker swallows a ``RuntimeError`` raised in the
    generator, so neither ``errored`` nor ``finished`` would fire); out of memory says what to
    do."""
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
