"""The Prior dock widget: choose a shipped prior or a checkpoint, or train one on image layers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QFileDialog, QFormLayout, QLabel, QLineEdit, QListWidget,
                            QListWidgetItem, QPlainTextEdit, QPushButton, QWidget)

from ..errors import InputError
from ..params import DEVICE, render_help
from ..plugin.jobs import TrainJob, Update, UpdateKind, devices, train_updates
from ..plugin.state import state_for
from ..training.config import TRAIN_PARAMS, WIDGET_DEFAULTS
from .forms import Section, combo, field_value, param_field, row, scroll_body, set_field
from .job_panel import JobPanel
from .layers import image_layers

__all__ = ["PriorWidget", "describe_prior", "TRAIN_FIELDS", "TRAIN_DEFAULTS"]


_FILE = "checkpoint file…"
_NONE = "(none)"
#: the training options the widget offers (declared in
#: :data:`napari_patchdiff.training.config.TRAIN_PARAMS`; the device is picked from this
#: machine's), in the form's order: fields, then check boxes after "save to"
TRAIN_FIELDS = ("network", "steps", "batch", "patch_sizes", "device")
TRAIN_FLAGS = ("resume", "overwrite", "stop_on_memorisation")
#: the widget's defaults: the declared ones but for the documented WIDGET_DEFAULTS
TRAIN_DEFAULTS = {**{p.name: p.default for p in TRAIN_PARAMS}, **WIDGET_DEFAULTS}
#: labels where the option's name would not say it (check boxes: their text)
TRAIN_LABELS = {"out": "save to", "resume": "continue that checkpoint",
                "overwrite": "replace that checkpoint",
                "stop_on_memorisation": "stop when it memorises"}
_TRAIN_PARAMS = {p.name: p for p in TRAIN_PARAMS}


def _label(name: str) -> str:
    return TRAIN_LABELS.get(name, name.replace("_", " "))


def _tooltip(name: str) -> str:
    """The option's declared help, naming the options it refers to as the widget does: a
    field by its label, another by its words and the value used."""
    def refer(other: str) -> str:
        if other in TRAIN_FIELDS + TRAIN_FLAGS or other == "out":
            return f"'{_label(other)}'"
        default = TRAIN_DEFAULTS.get(other)
        return f"the {_label(other)}" + ("" if default is None else f" ({default:g})")

    return render_help(_TRAIN_PARAMS[name].help, refer)


def describe_prior(meta: dict, runs_on: list[str] | None = None) -> str:
    """A few labelled lines about a prior from its checkpoint metadata; ``runs_on``: the
    devices this machine offers (default: :func:`napari_patchdiff.plugin.jobs.devices`)."""
    runs_on = devices() if runs_on is None else runs_on
    size = meta.get("image_size")
    lines = [f"{meta.get('name', '?')}: a {meta.get('kind', '?')} prior for "
             f"{meta.get('modality', '?')} images"
             + (f" of {size[0]} x {size[1]}" if size else "")]
    if meta.get("parameters"):
        lines.append(f"network: {meta.get('config_name', '?')}, "
                     f"{meta['parameters'] / 1e6:.1f} M parameters")
    if meta.get("patch_sizes"):
        lines.append(f"patches: {', '.join(map(str, meta['patch_sizes']))} px (inference "
                     f"{meta.get('inference_patch_size', '?')}, pad {meta.get('pad', '?')})")
    trained = sorted({seg.get("device") for seg in meta.get("segments") or []
                      if seg.get("device")} or ({meta["device"]} if meta.get("device") else set()))
    lines.append(f"trained: {meta.get('steps', '?')} steps"
                 + (f" on {' and '.join(trained)}" if trained else "")
                 + (f", {meta['created'][:10]}" if meta.get("created") else ""))
    lines.append(f"runs here on: {', '.join(runs_on)} (the Reconstruct widget's device)")
    val = {k: v for k, v in (meta.get("final_val_loss") or {}).items() if v is not None}
    if val:
        lines.append("validation loss by noise level sigma: " + ", ".join(
            f"sigma {k}: {v:.4f}" for k, v in val.items()))
    history = meta.get("memorisation_history") or []
    if history:
        lines.append("memorisation gap (about 1: generalises; rising: memorises): " + ", ".join(
            f"{step}: {m['gap']:.2f}" for step, m in history[-5:]))
    if meta.get("early_stop"):
        lines.append(f"stopped early: {meta['early_stop']['reason']}")
    if meta.get("adapted_from"):
        lines.append(f"adapted from {meta['adapted_from'].get('name', '?')}")
    return "\n".join(lines)


class PriorWidget(QWidget):
    """Choose a shipped prior or a checkpoint (its metadata is shown), or train a new one on
    image layers with progress, live loss and cancel (the checkpoint is saved on cancel)."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        browse = self._build_source()
        out_browse = self._build_training()
        self._build_layout(browse, out_browse)
        self._connect_signals(browse, out_browse)
        self._refresh_layers()
        self._source_changed(self.source_box.currentText())

    def _build_source(self) -> QPushButton:
        """The prior to use (a shipped one or a file: its Browse button returned) and its
        metadata."""
        from ..priors import shipped_priors

        self.source_box = combo([_NONE, *shipped_priors(), _FILE])
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("path/to/prior.safetensors")
        browse = QPushButton("Browse…")
        self.info = QPlainTextEdit()
        self.info.setReadOnly(True)
        self.info.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.info.textChanged.connect(self._fit_info)
        return browse

    def _build_training(self) -> QPushButton:
        """Training a new prior: the image layers, the options' inputs, where to save (its
        browse button returned), the job panel and the loss line."""
        self.layers = QListWidget()
        self.layers.setMaximumHeight(90)
        #: the training options' inputs, built from their declarations
        self.fields = {name: param_field(_TRAIN_PARAMS[name], TRAIN_DEFAULTS[name],
                                         _label(name), _tooltip(name))
                       for name in TRAIN_FIELDS + TRAIN_FLAGS if name != DEVICE.name}
        self.fields[DEVICE.name] = self.device_box = combo(devices(), DEVICE.default)
        self.device_box.setToolTip(DEVICE.help)
        self.network_box, self.steps_box = self.fields["network"], self.fields["steps"]
        self.batch_box, self.sizes_edit = self.fields["batch"], self.fields["patch_sizes"]
        self.resume_box, self.overwrite_box = self.fields["resume"], self.fields["overwrite"]
        self.early_stop_box = self.fields["stop_on_memorisation"]
        self.out_edit = QLineEdit(str(Path.home() / "napari-patchdiff" / "prior"))
        out_browse = QPushButton("…")
        self.panel = JobPanel("Train")
        self.loss = QLabel("")
        return out_browse

    def _build_layout(self, browse: QPushButton, out_browse: QPushButton) -> None:
        form = QFormLayout()
        form.addRow("prior", self.source_box)
        form.addRow("file", row(self.path_edit, browse))
        self.train_section = Section("Train a new prior on image layers")
        self.sections = [self.train_section]
        tform = self.train_section.form
        tform.addRow("image layers", self.layers)
        for name in TRAIN_FIELDS:
            tform.addRow(_label(name), self.fields[name])
        tform.addRow(_label("out"), row(self.out_edit, out_browse))
        for name in TRAIN_FLAGS:
            tform.addRow(self.fields[name])
        tform.addRow(self.panel)
        tform.addRow(self.loss)
        layout = scroll_body(self, min_height=100)
        layout.addLayout(form)
        layout.addWidget(self.info)
        layout.addWidget(self.train_section)
        layout.addStretch()

    def _connect_signals(self, browse: QPushButton, out_browse: QPushButton) -> None:
        self.source_box.currentTextChanged.connect(self._source_changed)
        self.path_edit.editingFinished.connect(lambda: self.use(self.path_edit.text()))
        browse.clicked.connect(self._browse)
        out_browse.clicked.connect(self._browse_out)
        self.panel.run_button.clicked.connect(self.train)
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            ev.connect(self._refresh_layers)

    def _fit_info(self) -> None:
        """As tall as its text (the dock scrolls), so no line hides in a second scroll bar."""
        doc = self.info.document()
        lines = sum(max(1, doc.findBlockByNumber(i).layout().lineCount())
                    for i in range(doc.blockCount()))
        height = lines * self.info.fontMetrics().lineSpacing() + 16
        self.info.setFixedHeight(max(60, min(height, 400)))

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit_info()

    def _refresh_layers(self, *_):
        checked = set(self.checked_layers())
        self.layers.clear()
        for layer in image_layers(self.viewer, users_only=True):  # no measurements, results
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

    def configure(self, layers=None, network=None, steps=None, batch=None, patch_sizes=None,
                  device=None, out=None, resume=None, overwrite=None,
                  stop_on_memorisation=None) -> None:
        """Set the training inputs as a user would (None: leave as it is; ``batch`` 0:
        auto)."""
        if layers is not None:
            for i in range(self.layers.count()):
                item = self.layers.item(i)
                item.setCheckState(Qt.CheckState.Checked if item.text() in layers
                                   else Qt.CheckState.Unchecked)
        given = dict(network=network, steps=steps, batch=batch, patch_sizes=patch_sizes,
                     device=device, resume=resume, overwrite=overwrite,
                     stop_on_memorisation=stop_on_memorisation)
        for name, value in given.items():
            if value is not None:
                set_field(_TRAIN_PARAMS[name], self.fields[name], value)
        if out is not None:
            self.out_edit.setText(str(out))

    def train_options(self) -> dict:
        """The training options set in the widget (InputError naming a bad one)."""
        return {name: self.device_box.currentText() if name == DEVICE.name
                else field_value(_TRAIN_PARAMS[name], w) for name, w in self.fields.items()}

    def train(self):
        """Train on the checked layers in a thread worker; the result becomes the prior."""
        from ..training import TrainConfig

        if self.panel.running:
            return None
        try:
            names = self.checked_layers()
            images = [(n, np.array(self.viewer.layers[n].data),
                       dict(self.viewer.layers[n].metadata)) for n in names]
            out = self.out_edit.text().strip()
            if not out:
                raise InputError("choose where to save the prior")
            config = TrainConfig(**self.train_options(),
                                 log_every=1)  # every step: the updates are paced by time
            job = TrainJob(out=out, config=config)
        except InputError as exc:
            return self.panel.fail(exc)
        self.loss.setText("")
        self.panel.start(lambda token, pace: train_updates(job, images, token, pace),
                         self._on_update, f"training {Path(out).name}", job.interval)
        return self.panel.worker

    def _on_update(self, u: Update) -> None:
        if u.metrics:
            self.loss.setText(", ".join(f"{k} {v:.4f}" for k, v in u.metrics.items()))
        if u.kind is UpdateKind.STEP:
            self.panel.status.setText(f"step {u.step}/{u.total}")
        elif u.kind.final:
            self.panel.status.setText(u.text or u.kind)
            if u.report:
                self.use(self.out_edit.text().strip())
