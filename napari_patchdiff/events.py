"""Typed events that every solver generator yields, the cancel token it checks, and the one
loop that drives them to the end (:class:`Drive`).

The GUI, the CLI and the tests all drive the same generators and read the same events.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch


class Cancelled(Exception):
    """Raised inside a solver when its cancel token is set; carries the last estimate."""

    def __init__(self, message: str = "cancelled", estimate: torch.Tensor | None = None):
        super().__init__(message)
        self.estimate = estimate


class CancelToken:
    """A thread-safe flag a solver polls between steps.

    The GUI sets it from the main thread; the solver, on a worker thread, raises
    :class:`Cancelled` at its next step.
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self, estimate: torch.Tensor | None = None) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by the user", estimate)


@dataclass(frozen=True)
class StepEvent:
    """One solver step.

    Attributes
    ----------
    step, total : progress, 1-based ``step`` out of ``total``.
    estimate : the current iterate, shape ``(B, 1, H, W)`` on the normalised scale.
    denoised : the prior's denoised estimate at this step (diffusion samplers), else None.
    nfe : network evaluations used so far (0 for classical methods).
    info : small extra values (residual norm, sigma, ...).
    """

    step: int
    total: int
    estimate: torch.Tensor
    denoised: torch.Tensor | None = None
    nfe: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.step >= self.total


class Drive:
    """Drives a stream of events to its end: the one loop of the API, ensembles, the GUI's jobs,
    the executors and their workers.

    Iterating yields the events and keeps the latest as :attr:`last`; :meth:`final` returns it,
    or raises ``error("<what> yielded no step")`` when there was none. Used as a context
    manager, a cancel raised in its block (:class:`Cancelled`, or Ctrl-C's KeyboardInterrupt)
    leaves with the run's partial result: ``exc.partial = partial(last)`` (``last`` None before
    the first event), so that a caller keeps what was computed.
    """

    def __init__(self, events, partial=None, what: str = "the solver",
                 error: type[Exception] = RuntimeError):
        self.events, self.partial, self.what, self.error = events, partial, what, error
        self.last: Any = None

    def __iter__(self):
        for event in self.events:
            self.last = event
            yield event

    def final(self):
        """The last event (an error if the stream yielded none)."""
        if self.last is None:
            raise self.error(f"{self.what} yielded no step")
        return self.last

    def run(self, on_event=None):
        """Every event to ``on_event`` (if given); returns :meth:`final`."""
        for event in self:
            if on_event is not None:
                on_event(event)
        return self.final()

    def __enter__(self) -> "Drive":
        return self

    def __exit__(self, kind, exc, traceback) -> bool:
        if self.partial is not None and isinstance(exc, (Cancelled, KeyboardInterrupt)):
            exc.partial = self.partial(self.last)
        return False


def run_to_end(generator, on_event=None, what: str = "the solver",
               error: type[Exception] = RuntimeError) -> StepEvent:
    """Drive a solver generator to the end (each event to ``on_event``) and return its last
    event; ``error`` if it yielded none (see :class:`Drive`)."""
    return Drive(generator, what=what, error=error).run(on_event)
