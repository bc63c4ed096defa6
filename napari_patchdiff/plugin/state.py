"""The model the dock widgets of one viewer share (pure Python: no Qt, no napari import).

The Measurement widget sets :attr:`PatchDiffState.problem`, the Prior widget
:attr:`PatchDiffState.prior`; the Reconstruct widget reads both and listens to the signals.
``state_for(viewer)`` returns the one state object of a viewer (created on first use, dropped
with the viewer), so widgets opened in any order, and scripts, find the same problem::

    from napari_patchdiff.plugin.state import state_for
    problem = state_for(viewer).problem      # an Problem, or None
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

from psygnal import Signal

from ..conventions import UNITS
from ..recon.problem import Problem

__all__ = ["PatchDiffState", "Display", "state_for"]


@dataclass
class Display:
    """How results of the current problem are shown: the spacing of its image axes (the source
    layer's scale), contrast limits and units (the source layer's), where it came from, and for
    one slice of a volume layer ``slice_z = (world z of the slice, z spacing)`` so that stacks
    of results sit at that slice. ``translate`` (the source layer's, of the image axes) and
    ``affine`` (the source's ``metadata["affine"]``, of the slice for one slice of a volume)
    place results where their input is, in the viewer and in files written from them."""

    scale: tuple[float, ...] | None = None
    contrast_limits: tuple[float, float] | None = None
    units: str = UNITS["unit"]
    source: str = ""
    slice_z: tuple[float, float] | None = None
    translate: tuple[float, ...] | None = None
    affine: list | None = None


class PatchDiffState:
    """The current problem (with how to display it) and the chosen prior of one viewer."""

    problem_changed = Signal(object)
    prior_changed = Signal(object)

    def __init__(self) -> None:
        self.problem: Problem | None = None
        self.display = Display()
        self.prior: str | None = None  # a shipped prior name or a checkpoint path
        self._priors: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def set_problem(self, problem: Problem | None, display: Display | None = None) -> None:
        self.problem = problem
        self.display = display or Display()
        self.problem_changed.emit(problem)

    def set_prior(self, source: str | None) -> None:
        self.prior = None if not source else str(source)
        self._priors.clear()
        self.prior_changed.emit(self.prior)

    def load_prior(self, source: str, device) -> Any:
        """The prior object for ``source`` on ``device``, loaded once (any thread)."""
        from ..priors import load_prior

        key = (str(source), str(device))
        with self._lock:
            if key not in self._priors:
                self._priors[key] = load_prior(source, device=device)
            return self._priors[key]


_STATES: dict[int, tuple[weakref.ref, PatchDiffState]] = {}


def state_for(viewer) -> PatchDiffState:
    """The shared state of ``viewer`` (one per viewer, freed with it)."""
    viewer = getattr(viewer, "__wrapped__", viewer)  # napari hands plugins a proxy
    entry = _STATES.get(id(viewer))
    if entry is None or entry[0]() is not viewer:
        key = id(viewer)

        def forget(ref):
            if _STATES.get(key, (None,))[0] is ref:
                del _STATES[key]

        entry = (weakref.ref(viewer, forget), PatchDiffState())
        _STATES[key] = entry
    return entry[1]
