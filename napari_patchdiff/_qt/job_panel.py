"""The Run / Cancel / progress panel that runs one background job for a dock widget."""
from __future__ import annotations

import time
from functools import partial
from typing import Any

from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import QCheckBox, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ..events import CancelToken
from ..plugin.jobs import Pace, Update, UpdateKind, error_message
from .forms import notify_error, row
from .workers import start_worker

__all__ = ["JobPanel"]


def _cancel_all(tokens, *_):
    for token in tokens:
        token.cancel()


class JobPanel(QWidget):
    """Run and Cancel buttons, a progress bar and a status line for one background job.

    :meth:`start` runs ``make_updates(token, pace)`` (a generator of :class:`Update`) on a
    thread worker and hands each update to ``on_update`` on the main thread. Errors reach the
    user as a napari notification and in the status line; Run is enabled again whatever happens.
    Cancel sets the job's :class:`CancelToken` (the core stops at its next step and the
    generator yields a final "cancelled" update with the partial result); closing the widget
    cancels too. Updates are paced (:class:`Pace`) by how long the main
    thread is busy showing them. The "activity dock" box adds napari's own progress bar (off by
    default: its animated indicator repaints the window continuously, which made CPU jobs ~3-4x
    slower under software OpenGL, see benchmarks/results/gui_latency.md).
    """

    #: every update, on the main thread and in order, after the widget has shown it (connect
    #: before starting a job: the worker's own signals may fire before a later connection)
    updated = Signal(object)

    #: default of the "activity dock" box
    activity_dock = False
    #: at most this fraction of the main thread's time goes to showing streamed updates
    #: (None: stream every ``interval`` seconds whatever it costs)
    max_load: float | None = 0.25

    def __init__(self, run_text: str = "Run"):
        super().__init__()
        self.run_button = QPushButton(run_text)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.activity = QCheckBox("activity dock")
        self.activity.setChecked(self.activity_dock)
        self.activity.setToolTip("also show the progress in napari's activity dock (its "
                                 "animated indicator costs CPU time while the job runs)")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.worker = None
        self.token: CancelToken | None = None
        self._tokens: list[CancelToken] = []
        self.destroyed.connect(partial(_cancel_all, self._tokens))
        self.pace = Pace()
        self._beat = QTimer(self)
        self._beat.setInterval(50)
        self._beat.timeout.connect(self._heartbeat)
        self._lag = self._last_beat = 0.0
        self._on_update = None
        self._final = self._busy = False
        self._queue: list[tuple[str, Any]] = []
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row(self.run_button, self.cancel_button, self.activity))
        layout.addWidget(self.progress)
        layout.addWidget(self.status)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, make_updates, on_update, desc: str, interval: float = 0.25) -> None:
        """Run ``make_updates(token, pace)`` (a generator of :class:`Update`) in a worker."""
        self.token, self.pace = CancelToken(), Pace(interval, self.max_load)
        self._tokens[:] = [self.token]
        self._on_update, self._final = on_update, False
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)  # not the busy indicator: it repaints continuously
        self.status.setText(f"{desc}: starting")
        self._lag, self._last_beat = 0.0, time.perf_counter()
        self._beat.start()
        self.worker = start_worker(make_updates(self.token, self.pace), desc=desc, connect={
            name: partial(self._post, name)
            for name in ("yielded", "errored", "aborted", "finished")},
            activity=self.activity.isChecked())

    def cancel(self) -> None:
        if self.worker is None or self._final:
            return
        # only the token: every job checks it at each step and then yields a final "cancelled"
        # update with its partial result and report; worker.quit() would make the worker drop
        # that update if it asked before the generator got there (seen on a loaded machine)
        self.token.cancel()
        self.status.setText("cancelling at the next step")

    def fail(self, exc: BaseException) -> None:
        """Show ``exc`` to the user: status line and napari notification."""
        message = error_message(exc)
        self.status.setText(f"Error: {message}")
        notify_error(message)

    def _post(self, kind: str, value=None) -> None:
        """Handle the worker's signals one at a time and in order: napari's progress bar
        processes Qt events while it updates, which would run the next signal's slot inside
        this one (and deliver updates out of order)."""
        self._queue.append((kind, value))
        if self._busy:
            return
        self._busy = True
        try:
            while self._queue:
                kind, value = self._queue.pop(0)
                getattr(self, f"_handle_{kind}")(value)
        finally:
            self._busy = False

    def _heartbeat(self) -> None:
        """Add up how late this timer fires: the main thread's busy time (showing updates,
        repainting), which sets how often the job streams (:class:`Pace`)."""
        now = time.perf_counter()
        self._lag += max(0.0, now - self._last_beat - self._beat.interval() / 1000)
        self._last_beat = now

    def _handle_yielded(self, u: Update) -> None:
        self.pace.measured(self._lag)  # what showing the previous update cost
        self._lag = 0.0
        self._final = self._final or u.kind.final
        self._on_update(u)
        self.updated.emit(u)
        if u.kind is UpdateKind.CANCELLED:  # the bar shows the work done, not what stopped
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
        elif u.total:  # no synchronous repaint (QProgressBar.setValue repaints at once, and a
            # window with an OpenGL canvas recomposes entirely: ~0.2 s with software OpenGL)
            self.progress.setUpdatesEnabled(False)
            self.progress.setRange(0, u.total)
            self.progress.setValue(min(u.step, u.total))
            self.progress.setUpdatesEnabled(True)
            pbar = getattr(self.worker, "pbar", None)
            if pbar is not None:
                if pbar.total != u.total:
                    pbar.total = u.total
                if u.step > pbar.n:
                    pbar.update(u.step - pbar.n)

    def _handle_aborted(self, _) -> None:  # quit() acted before the generator's last update
        if not self._final:
            self._final = True
            self._on_update(Update(UpdateKind.CANCELLED, text="cancelled"))
            self.progress.setRange(0, 1)
            self.progress.setValue(0)

    def _handle_errored(self, exc: BaseException) -> None:
        self._final = True
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.fail(exc)

    def _handle_finished(self, _) -> None:
        self._beat.stop()
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
