"""The dock widgets: Measurement, Prior and Reconstruct (plain Qt, built from the registries).

They share one :class:`~napari_patchdiff._qt.state.PatchDiffState` per viewer: Measurement sets
the problem, Prior the prior, Reconstruct runs methods on them in a thread worker and streams
the results into layers. Each widget also has a small programmatic surface (``configure``,
``simulate``, ``run``, ...) that the scripting API and the tests use.
"""
from __future__ import annotations

import random
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout,
                            QGroupBox, QHBoxLayout, QLabel, QLineEdit, QListWidget,
                            QListWidgetItem, QPlainTextEdit, QProgressBar, QPushButton, QSpinBox,
                            QVBoxLayout, QWidget)

from .. import api, io
from ..conventions import MODALITIES
from ..errors import InputError
from ..events import CancelToken
from ..operators import OPERATORS, Param
from ..solvers import SOLVERS
from ..uncertainty import DESIGNS
from .jobs import Pace, ReconJob, TrainJob, Update, devices, error_message, recon_updates, \
    start_worker, to_units, train_updates
from .state import Display, state_for

__all__ = ["MeasurementWidget", "PriorWidget", "ReconstructWidget", "ParamForm", "JobPanel",
           "show_layer"]

_MAX_SEED = 2**31 - 1


def _notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _combo(items, current=None, tips=None) -> QComboBox:
    box = QComboBox()
    for i, item in enumerate(items):
        box.addItem(str(item))
        if tips:
            box.setItemData(i, tips[i], Qt.ItemDataRole.ToolTipRole)
    if current is not None:
        box.setCurrentText(str(current))
    return box


def _spin(lo, hi, value, special: str | None = None) -> QSpinBox:
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setValue(value)
    if special:
        box.setSpecialValueText(special)
    return box


def _row(*widgets) -> QHBoxLayout:
    row = QHBoxLayout()
    for w in widgets:
        row.addWidget(w)
    return row


def show_layer(viewer, name: str, data, *, scale=None, translate=None, contrast_limits=None,
               colormap: str = "gray", metadata: dict | None = None):
    """Add image layer ``name`` or update it in place (one layer per stream)."""
    from napari.layers import Image

    data = np.asarray(data, dtype=np.float32)
    layer = viewer.layers[name] if name in viewer.layers else None
    if layer is not None and (not isinstance(layer, Image) or layer.ndim != data.ndim):
        viewer.layers.remove(layer)
        layer = None
    if layer is None:
        layer = viewer.add_image(data, name=name, colormap=colormap, scale=scale,
                                 translate=translate, metadata=metadata or {})
    else:
        layer.data = data
        if scale is not None:
            layer.scale = scale
        if translate is not None:
            layer.translate = translate
        if metadata is not None:
            layer.metadata = metadata
    if contrast_limits is not None:
        layer.contrast_limits = contrast_limits
    elif data.size and float(data.min()) < float(data.max()):
        layer.reset_contrast_limits()
    return layer


def _cancel_all(tokens, *_):
    for token in tokens:
        token.cancel()


def _image_layers(viewer):
    from napari.layers import Image

    return [ly for ly in viewer.layers if isinstance(ly, Image) and not ly.rgb]


class ParamForm(QWidget):
    """Inputs for a tuple of :class:`~napari_patchdiff.operators.Param` (a registry entry's).

    Numbers are typed as text: empty means the method's own (operator/noise dependent) default,
    shown as the placeholder after :meth:`show_defaults`. Choices are combo boxes, flags check
    boxes.
    """

    def __init__(self, params: tuple[Param, ...] = (), skip=()):
        super().__init__()
        self.params = [p for p in params if p.name not in skip]
        self.inputs: dict[str, QWidget] = {}
        form = QFormLayout(self)
        form.setContentsMargins(12, 0, 0, 0)
        for p in self.params:
            if p.type is bool:
                w = QCheckBox()
                w.setChecked(bool(p.default))
            elif p.choices:
                w = _combo((["auto"] if p.default is None else []) + list(p.choices), p.default)
            else:
                w = QLineEdit("" if p.default is None else _fmt(p.default))
                w.setPlaceholderText("auto")
            w.setToolTip(p.help)
            form.addRow(p.name.replace("_", " "), w)
            self.inputs[p.name] = w

    def values(self) -> dict[str, Any]:
        """The values set (InputError for text that is not a number)."""
        out = {}
        for p in self.params:
            w = self.inputs[p.name]
            if isinstance(w, QCheckBox):
                out[p.name] = w.isChecked()
            elif isinstance(w, QComboBox):
                if w.currentText() != "auto":
                    out[p.name] = p.type(w.currentText())
            elif w.text().strip():
                try:
                    out[p.name] = p.type(w.text())
                except ValueError:
                    raise InputError(f"{p.name}: expected {p.type.__name__}, got "
                                     f"{w.text()!r}") from None
        return out

    def set_values(self, values: dict[str, Any]) -> None:
        for name, value in values.items():
            w = self.inputs.get(name)
            if w is None:
                raise InputError(f"no parameter {name!r} here; choose from {sorted(self.inputs)}")
            if isinstance(w, QCheckBox):
                w.setChecked(bool(value))
            elif isinstance(w, QComboBox):
                w.setCurrentText("auto" if value is None else str(value))
            else:
                w.setText("" if value is None else str(value))

    def show_defaults(self, defaults: dict[str, Any]) -> None:
        for name, w in self.inputs.items():
            if isinstance(w, QLineEdit):
                value = defaults.get(name)
                w.setPlaceholderText("auto" if value is None else f"auto: {_fmt(value)}")


class _FormSlot(QWidget):
    """Holds a :class:`ParamForm` that is rebuilt when the operator/method changes."""

    def __init__(self):
        super().__init__()
        self.setLayout(QVBoxLayout())
        self.layout().setContentsMargins(0, 0, 0, 0)
        self.form = ParamForm()
        self.layout().addWidget(self.form)

    def set(self, params, skip=()) -> ParamForm:
        self.form.setParent(None)
        self.form.deleteLater()
        self.form = ParamForm(params, skip)
        self.layout().addWidget(self.form)
        return self.form


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
        layout.addLayout(_row(self.run_button, self.cancel_button, self.activity))
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
        _notify_error(message)

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
        self._final = self._final or u.kind in ("done", "cancelled")
        self._on_update(u)
        self.updated.emit(u)
        if u.total:  # no synchronous repaint (QProgressBar.setValue repaints at once, and a
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
            self._on_update(Update("cancelled", text="cancelled"))

    def _handle_errored(self, exc: BaseException) -> None:
        self._final = True
        self.fail(exc)

    def _handle_finished(self, _) -> None:
        self._beat.stop()
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)


# ------------------------------------------------------------------------------------------------
# Measurement


class MeasurementWidget(QWidget):
    """Simulate ``y = A x + noise`` from an image layer, or load a measured file written by the
    CLI (``measurement.tif`` + sidecar); shows the measurement and the operator's direct
    reconstruction, and hands the problem to the other widgets."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self.layer_box = QComboBox()
        self.slice_box = _spin(-1, 0, -1, "all")
        self.slice_box.setToolTip("one slice of a volume, or all slices")
        self.modality_box = _combo(("auto",) + MODALITIES)
        self.modality_box.setToolTip("intensity convention (auto: the layer's metadata, else "
                                     "guessed from the values)")
        names = OPERATORS.names()
        self.operator_box = _combo(names, "ct-parallel", [OPERATORS.doc(n) for n in names])
        self.params = _FormSlot()
        self.noise_box = QDoubleSpinBox()
        self.noise_box.setDecimals(4)
        self.noise_box.setRange(0.0, 1e6)
        self.noise_box.setSingleStep(0.05)
        self.noise_box.setToolTip("std of the Gaussian noise in measurement units (CT: line "
                                  "integrals; MRI: k-space; else image units)")
        self.seed_box = _spin(0, _MAX_SEED, 0)
        simulate = QPushButton("Simulate")
        load = QPushButton("Load measurement…")
        self.info = QLabel("")
        self.info.setWordWrap(True)

        form = QFormLayout()
        form.addRow("image", self.layer_box)
        form.addRow("slice", self.slice_box)
        form.addRow("modality", self.modality_box)
        form.addRow("operator", self.operator_box)
        form.addRow(self.params)
        form.addRow("noise std", self.noise_box)
        form.addRow("noise seed", self.seed_box)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(_row(simulate, load))
        layout.addWidget(self.info)
        layout.addStretch()

        self.operator_box.currentTextChanged.connect(
            lambda name: self.params.set(OPERATORS.get(name).PARAMS))
        self.layer_box.currentTextChanged.connect(self._layer_changed)
        simulate.clicked.connect(self.simulate)
        load.clicked.connect(self._browse)
        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            ev.connect(self._refresh_layers)
        self.params.set(OPERATORS.get(self.operator_box.currentText()).PARAMS)
        self._refresh_layers()

    def _refresh_layers(self, *_):
        current = self.layer_box.currentText()
        self.layer_box.blockSignals(True)
        self.layer_box.clear()
        self.layer_box.addItems([ly.name for ly in _image_layers(self.viewer)
                                 if not ly.name.startswith(("measurement", "initial"))])
        if current:
            self.layer_box.setCurrentText(current)
        self.layer_box.blockSignals(False)
        self._layer_changed(self.layer_box.currentText())

    def _layer_changed(self, name: str) -> None:
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        depth = layer.data.shape[0] - 1 if layer is not None and layer.ndim == 3 else 0
        if self.slice_box.maximum() != depth:
            self.slice_box.setMaximum(depth)
            self.slice_box.setValue(-1)
        self.slice_box.setEnabled(depth > 0)

    def configure(self, layer: str | None = None, slice: int | None = None,
                  operator: str | None = None, noise: float | None = None,
                  seed: int | None = None, modality: str | None = None, **op_params) -> None:
        """Set the inputs as a user would (``slice=-1``: all slices)."""
        if layer is not None:
            if self.layer_box.findText(layer) < 0:
                raise InputError(f"no image layer {layer!r}")
            self.layer_box.setCurrentText(layer)
        if slice is not None:
            self.slice_box.setValue(slice)
        if modality is not None:
            self.modality_box.setCurrentText(modality)
        if operator is not None:
            OPERATORS.get(operator)
            self.operator_box.setCurrentText(operator)
        if noise is not None:
            self.noise_box.setValue(noise)
        if seed is not None:
            self.seed_box.setValue(seed)
        self.params.form.set_values(op_params)

    def simulate(self) -> api.Problem | None:
        """Simulate from the chosen layer: the problem, or None after showing the error."""
        try:
            name = self.layer_box.currentText()
            if name not in self.viewer.layers:
                raise InputError("choose an image layer (open one, or File > Open Sample)")
            layer = self.viewer.layers[name]
            sl = self.slice_box.value() if layer.ndim == 3 and self.slice_box.value() >= 0 else None
            modality = self.modality_box.currentText()
            truth = api.truth_from_array(np.asarray(layer.data), layer.metadata, slice=sl,
                                         modality=None if modality == "auto" else modality)
            problem = api.simulate(truth, self.operator_box.currentText(),
                                   noise=self.noise_box.value(), seed=self.seed_box.value(),
                                   **self.params.form.values())
        except InputError as exc:
            return self._fail(exc)
        scale = tuple(float(s) for s in layer.scale[-truth.x.ndim:])
        z = None
        if sl is not None:
            z = (float(layer.translate[0] + sl * layer.scale[0]), float(layer.scale[0]))
        units = layer.metadata.get("units") or {"ct": "HU", "mri": "scanner units"}.get(
            truth.modality, "normalised [0, 1]")
        where = name + (f", slice {sl}" if sl is not None else "")
        self._publish(problem, Display(scale, tuple(layer.contrast_limits), units, where, z))
        return problem

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Measured sinogram / k-space", "",
                                              "Measurements (*.tif *.tiff *.npy)")
        if path:
            self.load_measurement(path)

    def load_measurement(self, path) -> api.Problem | None:
        """Use a measured file (the CLI's ``measurement.tif``: its sidecar names the operator,
        its parameters and the image size); no truth, so results stay on the [0, 1] scale."""
        try:
            y, meta = io.read_measurement(path)
            shape = meta.get("image_shape")
            if shape is None:
                raise InputError(f"{path}: no sidecar gives the image size (image_shape)")
            operator = meta.get("operator") or self.operator_box.currentText()
            params = dict(meta.get("operator_params") or {})
            if not meta.get("operator"):
                params = {**self.params.form.values(), **params}
            problem = api.from_measurement(y, operator, shape, **params)
            problem.noise = float(meta.get("noise_std", self.noise_box.value()))
        except InputError as exc:
            return self._fail(exc)
        self._publish(problem, Display((1.0, 1.0), (0.0, 1.0), "normalised [0, 1]",
                                       Path(path).name))
        return problem

    def _fail(self, exc) -> None:
        self.info.setText(f"Error: {error_message(exc)}")
        _notify_error(error_message(exc))

    def _publish(self, problem: api.Problem, display: Display) -> None:
        op = problem.op
        y = problem.y.detach().cpu().numpy()[:, 0]
        y = y[0] if problem.squeeze else y
        meta = {"operator": op.name, "operator_params": dict(op.params),
                "image_shape": list(op.image_shape), "noise_std": problem.noise,
                "seed": problem.seed, "units": op.measurement_units}
        if np.iscomplexobj(y):
            y = np.log1p(np.abs(y))
            meta["display"] = "log(1 + |k-space|)"
        show_layer(self.viewer, "measurement", y, metadata=meta)
        x = op.initial(problem.y).detach().cpu().numpy()[:, 0]
        x = x[0] if problem.squeeze else x
        show_layer(self.viewer, f"initial ({op.initial_name})", to_units(problem, x),
                   scale=display.scale, contrast_limits=display.contrast_limits,
                   metadata={"operator": op.describe(), "units": display.units,
                             "modality": problem.truth.modality if problem.truth else None})
        self.state.set_problem(problem, display)
        self.info.setText(f"{op.name} of {display.source}: {problem.y.shape[0]} slice(s) of "
                          f"{op.image_shape[0]} x {op.image_shape[1]}, measurement "
                          f"{tuple(op.measurement_shape)}, noise {problem.noise:g}"
                          + (f", modality {problem.truth.modality}" if problem.truth else ""))


# ------------------------------------------------------------------------------------------------
# Prior


_FILE = "checkpoint file…"
_NONE = "(none)"
_SHOW_META = ("name", "kind", "modality", "image_size", "pad", "config_name", "parameters",
              "steps", "patch_sizes", "inference_patch_size", "device", "created")


def describe_prior(meta: dict) -> str:
    """A few lines about a prior from its checkpoint metadata."""
    lines = [f"{k}: {meta[k]}" for k in _SHOW_META if meta.get(k) is not None]
    val = {k: v for k, v in (meta.get("final_val_loss") or {}).items() if v is not None}
    if val:
        lines.append("val loss: " + ", ".join(f"{k}: {v:.4f}" for k, v in val.items()))
    return "\n".join(lines)


class PriorWidget(QWidget):
    """Choose a shipped prior or a checkpoint (its metadata is shown), or train a new one on
    image layers with progress, live loss and cancel (the checkpoint is saved on cancel)."""

    def __init__(self, napari_viewer):
        super().__init__()
        from ..priors import shipped_priors

        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self.source_box = _combo([_NONE, *shipped_priors(), _FILE])
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("path/to/prior.safetensors")
        browse = QPushButton("Browse…")
        self.info = QPlainTextEdit()
        self.info.setReadOnly(True)
        self.info.setMaximumHeight(150)

        self.layers = QListWidget()
        self.layers.setMaximumHeight(90)
        self.config_box = _combo(("tiny", "cpu", "gpu"), "cpu")
        self.config_box.setToolTip("network size: tiny (tests), cpu (3.7 M), gpu (25 M)")
        self.steps_box = _spin(1, 10_000_000, 2000)
        self.batch_box = _spin(0, 4096, 0, "auto")
        self.sizes_edit = QLineEdit("16 32 64")
        self.device_box = _combo(devices())
        self.resume_box = QCheckBox("continue the checkpoint at 'save to'")
        self.overwrite_box = QCheckBox("replace the checkpoint at 'save to'")
        self.out_edit = QLineEdit(str(Path.home() / "napari-patchdiff" / "prior"))
        out_browse = QPushButton("…")
        self.panel = JobPanel("Train")
        self.loss = QLabel("")

        form = QFormLayout()
        form.addRow("prior", self.source_box)
        form.addRow("file", _row(self.path_edit, browse))
        group = QGroupBox("Train a new prior")
        tform = QFormLayout(group)
        tform.addRow("image layers", self.layers)
        tform.addRow("network", self.config_box)
        tform.addRow("steps", self.steps_box)
        tform.addRow("batch", self.batch_box)
        tform.addRow("patch sizes", self.sizes_edit)
        tform.addRow("device", self.device_box)
        tform.addRow("save to", _row(self.out_edit, out_browse))
        tform.addRow(self.resume_box)
        tform.addRow(self.overwrite_box)
        tform.addRow(self.panel)
        tform.addRow(self.loss)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.info)
        layout.addWidget(group)
        layout.addStretch()

        self.source_box.currentTextChanged.connect(self._source_changed)
        self.path_edit.editingFinished.connect(lambda: self.use(self.path_edit.text()))
        browse.clicked.connect(self._browse)
        out_browse.clicked.connect(self._browse_out)
        self.panel.run_button.clicked.connect(self.train)
        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            ev.connect(self._refresh_layers)
        self._refresh_layers()
        self._source_changed(self.source_box.currentText())

    def _refresh_layers(self, *_):
        checked = set(self.checked_layers())
        self.layers.clear()
        for layer in _image_layers(self.viewer):
            item = QListWidgetItem(layer.name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if layer.name in checked
                               else Qt.CheckState.Unchecked)
            self.layers.addItem(item)

    def checked_layers(self) -> list[str]:
        return [self.layers.item(i).text() for i in range(self.layers.count())
                if self.layers.item(i).checkState() == Qt.CheckState.Checked]

    def _source_changed(self, text: str) -> None:
        self.path_edit.setEnabled(text == _FILE)
        self.use(self.path_edit.text() if text == _FILE else None if text == _NONE else text)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Prior checkpoint", "",
                                              "Checkpoints (*.safetensors *.pt)")
        if path:
            self.use(path)

    def _browse_out(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the prior as", self.out_edit.text(),
                                              "Checkpoints (*.safetensors)")
        if path:
            self.out_edit.setText(path)

    def use(self, source: str | None) -> bool:
        """Choose a shipped prior name or a checkpoint path (None: no prior) and show its
        metadata; False (and the error shown) if it cannot be read."""
        from ..priors import read_metadata, shipped_priors

        if not source:
            self.state.set_prior(None)
            self.info.setPlainText("No prior: only the classical methods can run.")
            return True
        try:
            meta = read_metadata(shipped_priors().get(source, source))
        except InputError as exc:
            self.state.set_prior(None)
            self.info.setPlainText(f"Error: {exc}")
            return False
        shipped = source in shipped_priors()
        self.source_box.blockSignals(True)
        self.source_box.setCurrentText(source if shipped else _FILE)
        self.source_box.blockSignals(False)
        self.path_edit.setEnabled(not shipped)
        if not shipped:
            self.path_edit.setText(str(source))
        self.state.set_prior(source)
        self.info.setPlainText(describe_prior(meta))
        return True

    def configure(self, layers=None, config=None, steps=None, batch=None, patch_sizes=None,
                  device=None, out=None, resume=None, overwrite=None) -> None:
        """Set the training inputs as a user would."""
        if layers is not None:
            for i in range(self.layers.count()):
                item = self.layers.item(i)
                item.setCheckState(Qt.CheckState.Checked if item.text() in layers
                                   else Qt.CheckState.Unchecked)
        for box, value in ((self.config_box, config), (self.device_box, device)):
            if value is not None:
                box.setCurrentText(str(value))
        for box, value in ((self.steps_box, steps), (self.batch_box, batch)):
            if value is not None:
                box.setValue(int(value))
        if patch_sizes is not None:
            self.sizes_edit.setText(" ".join(str(p) for p in patch_sizes))
        if out is not None:
            self.out_edit.setText(str(out))
        for box, value in ((self.resume_box, resume), (self.overwrite_box, overwrite)):
            if value is not None:
                box.setChecked(bool(value))

    def train(self):
        """Train on the checked layers in a thread worker; the result becomes the prior."""
        if self.panel.running:
            return None
        try:
            names = self.checked_layers()
            images = [(n, np.array(self.viewer.layers[n].data),
                       dict(self.viewer.layers[n].metadata)) for n in names]
            try:
                sizes = tuple(int(s) for s in self.sizes_edit.text().replace(",", " ").split())
            except ValueError:
                raise InputError(f"patch sizes: expected integers, got "
                                 f"{self.sizes_edit.text()!r}") from None
            out = self.out_edit.text().strip()
            if not out:
                raise InputError("choose where to save the prior")
            job = TrainJob(out=out, config=self.config_box.currentText(),
                           steps=self.steps_box.value(), batch=self.batch_box.value() or None,
                           patch_sizes=sizes, resume=self.resume_box.isChecked(),
                           overwrite=self.overwrite_box.isChecked(),
                           device=self.device_box.currentText())
        except InputError as exc:
            return self.panel.fail(exc)
        self.loss.setText("")
        self.panel.start(lambda token, pace: train_updates(job, images, token, pace),
                         self._on_update, f"training {Path(out).name}", job.interval)
        return self.panel.worker

    def _on_update(self, u: Update) -> None:
        if u.metrics:
            self.loss.setText(", ".join(f"{k} {v:.4f}" for k, v in u.metrics.items()))
        if u.kind == "step":
            self.panel.status.setText(f"step {u.step}/{u.total}")
        elif u.kind in ("done", "cancelled"):
            self.panel.status.setText(u.text or u.kind)
            if u.report:
                self.use(self.out_edit.text().strip())


# ------------------------------------------------------------------------------------------------
# Reconstruct / sample


class ReconstructWidget(QWidget):
    """Run a method on the current problem in a thread worker and stream the results.

    One run: the estimate streams into the layer named after the method. Several samples of a
    diffusion method: layers "samples" (sample axis first), "mean", "std", "lower", "upper" and,
    antithetic, "pair correlation" update as samples finish. PSNR/SSIM against the truth update
    live; result layers carry the run's report in ``layer.metadata``. A cancelled run keeps its
    last estimate as "<method> (cancelled)".
    """

    #: seconds between streamed estimates
    interval = 0.25

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self._job: ReconJob | None = None
        self._display = Display()
        self.problem_label = QLabel("")
        self.problem_label.setWordWrap(True)
        names = SOLVERS.names()
        self.method_box = _combo(names, "admm-tv", [SOLVERS.doc(n) for n in names])
        self.params = _FormSlot()
        self.seed_box = _spin(0, _MAX_SEED, 0)
        self.seed_box.setToolTip("seed of the sampler's noise stream (runs are reproducible)")
        randomise = QPushButton("Randomise")
        self.device_box = _combo(devices())
        self.samples_box = _spin(1, 1024, 1)
        self.samples_box.setToolTip("posterior samples (diffusion methods): mean, std, bounds")
        self.design_box = _combo(DESIGNS)
        self.design_box.setToolTip("iid noise, or antithetic pairs (negated noise)")
        self.batch_box = _spin(0, 1024, 0, "auto")
        self.batch_box.setToolTip("samples per sampler run (auto: about 8 slices at once)")
        self.panel = JobPanel("Run")
        self.metrics = QLabel("")
        self.metrics.setWordWrap(True)

        form = QFormLayout()
        form.addRow(self.problem_label)
        form.addRow("method", self.method_box)
        form.addRow(self.params)
        form.addRow("seed", _row(self.seed_box, randomise))
        form.addRow("device", self.device_box)
        form.addRow("samples", self.samples_box)
        form.addRow("noise design", self.design_box)
        form.addRow("batch", self.batch_box)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.panel)
        layout.addWidget(self.metrics)
        layout.addStretch()

        self.method_box.currentTextChanged.connect(self._set_method)
        randomise.clicked.connect(lambda: self.seed_box.setValue(random.randint(0, _MAX_SEED)))
        self.panel.run_button.clicked.connect(self.run)
        self.state.problem_changed.connect(self._refresh)
        self.state.prior_changed.connect(self._refresh)
        self._set_method(self.method_box.currentText())

    def _set_method(self, name: str) -> None:
        self.params.set(SOLVERS.get(name).params, skip=("seed",))
        self._refresh()

    def _refresh(self, *_) -> None:
        """Enable diffusion methods only with a prior; show the problem and current defaults."""
        has_prior = bool(self.state.prior)
        model = self.method_box.model()
        for i in range(self.method_box.count()):
            model.item(i).setEnabled(has_prior or not api.needs_prior(self.method_box.itemText(i)))
        method = self.method_box.currentText()
        diffusion = api.needs_prior(method)
        if diffusion and not has_prior:
            self.method_box.setCurrentText("admm-tv")  # comes back through _set_method
            return
        sampler = SOLVERS.get(method).sampler
        for w in (self.samples_box, self.design_box, self.batch_box):
            w.setEnabled(sampler)
        problem = self.state.problem
        if problem is None:
            self.problem_label.setText("No problem yet: simulate or load one in the "
                                       "Measurement widget.")
            return
        self.problem_label.setText(f"Problem: {problem.op.name}, {problem.y.shape[0]} slice(s) "
                                   f"of {self.state.display.source}; prior: "
                                   f"{self.state.prior or 'none'}")
        try:
            self.params.form.show_defaults(api.method_params(problem, method))
        except InputError:
            pass

    def configure(self, method: str | None = None, seed: int | None = None,
                  device: str | None = None, samples: int | None = None,
                  design: str | None = None, batch: int | None = None, **params) -> None:
        """Set the inputs as a user would (``params``: the method's parameters)."""
        if method is not None:
            SOLVERS.get(method)
            if api.needs_prior(method) and not self.state.prior:
                raise InputError(f"method {method!r} needs a prior: choose one first")
            self.method_box.setCurrentText(method)
        if device is not None:
            if self.device_box.findText(device) < 0:
                raise InputError(f"unknown device {device!r}; choose one of {devices()}")
            self.device_box.setCurrentText(device)
        for box, value in ((self.seed_box, seed), (self.samples_box, samples),
                           (self.batch_box, batch)):
            if value is not None:
                box.setValue(int(value))
        if design is not None:
            self.design_box.setCurrentText(design)
        self.params.form.set_values(params)

    def snapshot(self) -> ReconJob:
        """The widget's values as a frozen job (InputError if something is missing)."""
        if self.state.problem is None:
            raise InputError("no problem yet: simulate or load one in the Measurement widget")
        method = self.method_box.currentText()
        diffusion = api.needs_prior(method)
        if diffusion and not self.state.prior:
            raise InputError(f"method {method!r} needs a prior: choose one in the Prior widget")
        return ReconJob(method, self.params.form.values(), seed=self.seed_box.value(),
                        device=self.device_box.currentText(),
                        samples=self.samples_box.value() if SOLVERS.get(method).sampler else 1,
                        design=self.design_box.currentText(),
                        batch=self.batch_box.value() or None,
                        prior=self.state.prior if diffusion else None, interval=self.interval)

    def run(self):
        """Start a run (no-op while one runs); the worker, or None after showing the error."""
        if self.panel.running:
            return None
        try:
            job = self.snapshot()
        except InputError as exc:
            self.panel.fail(exc)
            return None
        problem, self._job, self._display = self.state.problem, job, self.state.display
        self.metrics.setText("")
        what = f"{job.samples} samples of {job.method}" if job.samples > 1 else job.method
        self.panel.start(lambda token, pace: recon_updates(job, problem, token,
                                                           self.state.load_prior, pace),
                         self._on_update, what, job.interval)
        return self.panel.worker

    # -- results ------------------------------------------------------------------------------
    def _show(self, name, data, report=None, stack=False, units=None, **kw):
        d = self._display
        scale, translate = (tuple(d.scale) if d.scale else None), None
        if stack and d.slice_z is not None:  # one slice of a volume: the stack sits at it
            data = np.asarray(data)[:, None]
            scale = (1.0, d.slice_z[1], *scale)
            translate = (0.0, d.slice_z[0], 0.0, 0.0)
        elif stack and scale is not None:
            scale = (1.0, *scale)
        meta = None if report is None else {**report, "units": units or d.units}
        return show_layer(self.viewer, name, data, scale=scale, translate=translate,
                          metadata=meta, **kw)

    def _on_update(self, u: Update) -> None:
        name, limits = self._job.method, self._display.contrast_limits
        report = u.report or None
        if u.kind == "step" and u.image is not None:
            self._show(name, u.image, contrast_limits=limits)
        if u.samples is not None:
            self._show("samples", u.samples, report, stack=True, contrast_limits=limits)
        for key, data in (u.maps or {}).items():
            kw = {"contrast_limits": limits} if key in ("mean", "lower", "upper") else {}
            if key == "std":
                kw = {"colormap": "magma"}
            elif key == "pair correlation":
                kw = {"colormap": "bwr", "contrast_limits": (-1.0, 1.0), "units": "correlation"}
            self._show(key, data, report, **kw)
        if u.kind == "done":
            if u.samples is None:
                self._show(name, u.image, report, contrast_limits=limits)
            elif name in self.viewer.layers:  # an ensemble: the samples hold the result
                self.viewer.layers.remove(name)
        elif u.kind == "cancelled":
            cancelled = f"{name} (cancelled)"
            if cancelled in self.viewer.layers:
                self.viewer.layers.remove(cancelled)
            if name in self.viewer.layers:
                self.viewer.layers[name].name = cancelled
            if u.image is not None or cancelled in self.viewer.layers:
                image = u.image if u.image is not None else self.viewer.layers[cancelled].data
                self._show(cancelled, image, {**(report or {"method": name}), "cancelled": True},
                           contrast_limits=limits)
        self.metrics.setText(self._metrics_text(u) or self.metrics.text())
        self.panel.status.setText(self._status_text(u))

    def _metrics_text(self, u: Update) -> str:
        m = u.metrics
        parts = []
        if "psnr" in m:
            parts.append(f"{'mean' if u.maps else 'estimate'}: PSNR {m['psnr']:.2f} dB")
        if "ssim" in m:
            parts.append(f"SSIM {m['ssim']:.4f}")
        if "coverage" in m:
            parts.append(f"coverage of the {self._job.level:.0%} bounds {m['coverage']:.1%}")
        return ", ".join(parts)

    def _status_text(self, u: Update) -> str:
        if u.kind == "step":
            return u.text or f"step {u.step}/{u.total}"
        if u.kind == "sample":
            return f"{u.text} of {self._job.samples} done"
        if u.kind == "done":
            secs = u.report.get("seconds")
            return f"done: {self._job.method}" + (f" in {secs:.1f} s" if secs else "")
        return f"cancelled: {u.text or 'partial result kept'}"
