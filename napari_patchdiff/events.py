"""Typed events that every solver generator yields, and the cancel token it checks.

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


def run_to_end(generator) -> StepEvent:
    """Drive a solver generator to the end and return its last event."""
    last = None
    for last in generator:
        pass
    if last is None:
        raise RuntimeError("the solver yielded no event")
    return last
