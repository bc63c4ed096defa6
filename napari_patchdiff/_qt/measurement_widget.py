"""The Measurement dock widget: simulate a measurement from an image layer, or load one."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QLabel,
                            QMenu, QPushButton, QWidget)

from .. import api, io
from ..conventions import MODALITIES, UNITS, units_of
from ..errors import InputError
from ..io.geometry import slice_affine
from ..operators import OPERATORS
from ..plugin.jobs import error_message, to_units
from ..plugin.state import Display, state_for
from .forms import (MAX_SEED, FormSlot, Section, combo, notify_error, row, scroll_body,
                    spin)
from .layer_io import read_volume
from .layers import ROLE, image_layers, plugin_role, show_layer

#: operator parameters the simulation takes from the chosen layer, not from the form
#: (``depth``: the slices a 3D k-space volume couples)
_SET_BY_VOLUME = ("depth",)

__all__ = ["MeasurementWidget"]


class MeasurementWidget(QWidget):
    """Simulate ``y = A x + noise`` from an image layer, or load a measured file written by the
    CLI (``measurement.tif`` + sidecar); shows the measurement and the operator's direct
    reconstruction, and hands the problem to the other widgets. "Load volume…" opens a NIfTI,
    DICOM (file or series folder), TIFF or ``.npy`` volume as layers with its geometry
    (:meth:`load_volume`)."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self._layers = {}  # the measurement and initial layers this widget shows
        self._build_inputs()
        simulate, load = self._build_buttons()
        self.info = QLabel("")
        self.info.setWordWrap(True)
        self._build_layout(simulate, load)
        self._connect_signals(simulate, load)
        self.params.set(OPERATORS.get(self.operator_box.currentText()).PARAMS,
                        skip=_SET_BY_VOLUME)
        self._refresh_layers()

    def _build_inputs(self) -> None:
        """The source image and slice, its modality, the operator and its parameters, the
        noise and its seed."""
        self.layer_box = QComboBox()
        self.slice_box = spin(-1, 0, -1, "all")
        self.slice_box.setToolTip("one slice of a volume, or all slices")
        self.modality_box = combo(("auto",) + MODALITIES)
        self.modality_box.setToolTip("intensity convention (auto: the layer's metadata, else "
                                     "guessed from the values)")
        names = OPERATORS.names()
        self.operator_box = combo(names, "ct-parallel", [OPERATORS.doc(n) for n in names])
        self.params = FormSlot()
        self.noise_box = QDoubleSpinBox()
        self.noise_box.setDecimals(4)
        self.noise_box.setRange(0.0, 1e6)
        self.noise_box.setSingleStep(0.05)
        self.noise_box.setToolTip("std of the Gaussian noise in measurement units (CT: line "
                                  "integrals; MRI: k-space; else image units)")
        self.seed_box = spin(0, MAX_SEED, 0)

    def _build_buttons(self) -> tuple[QPushButton, QPushButton]:
        """Simulate and Load measurement (returned), and Load volume with its menu."""
        simulate = QPushButton("Simulate")
        load = QPushButton("Load measurement…")
        volume = QPushButton("Load volume…")
        volume.setToolTip("open a NIfTI or DICOM volume (a file, or a folder of one or more "
                          "DICOM series) as image layers with its voxel spacing and position")
        menu = QMenu(volume)
        menu.addAction("NIfTI / DICOM / TIFF file…", self._browse_volume_file)
        menu.addAction("DICOM folder…", self._browse_volume_folder)
        volume.setMenu(menu)
        self.volume_button = volume
        return simulate, load

    def _build_layout(self, simulate: QPushButton, load: QPushButton) -> None:
        form = QFormLayout()
        form.addRow(self.volume_button)
        form.addRow("image", self.layer_box)
        form.addRow("slice", self.slice_box)
        form.addRow("operator", self.operator_box)
        form.addRow(self.params)
        form.addRow("noise std", self.noise_box)
        self.options = Section("Modality, noise seed")
        self.options.form.addRow("modality", self.modality_box)
        self.options.form.addRow("noise seed", self.seed_box)
        self.sections = [self.options]
        layout = scroll_body(self, min_height=120)
        layout.addLayout(form)
        layout.addLayout(row(simulate, load))
        layout.addWidget(self.info)
        layout.addWidget(self.options)
        layout.addStretch()

    def _connect_signals(self, simulate: QPushButton, load: QPushButton) -> None:
        self.operator_box.currentTextChanged.connect(
            lambda name: self.params.set(OPERATORS.get(name).PARAMS, skip=_SET_BY_VOLUME))
        self.layer_box.currentTextChanged.connect(self._layer_changed)
        simulate.clicked.connect(self.simulate)
        load.clicked.connect(self._browse)
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            ev.connect(self._refresh_layers)

    def _refresh_layers(self, *_):
        current = self.layer_box.currentText()
        self.layer_box.blockSignals(True)
        self.layer_box.clear()
        self.layer_box.addItems([ly.name for ly in image_layers(self.viewer)
                                 if plugin_role(ly) not in ("measurement", "initial")])
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
                  operator: str | None = None, noise_std: float | None = None,
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
        if noise_std is not None:
            self.noise_box.setValue(noise_std)
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
            operator = self.operator_box.currentText()
            # an operator that runs on CUDA only (ct-cone) simulates there, or says why not
            device = OPERATORS.get(operator).default_device()
            problem = api.simulate(truth, operator, noise_std=self.noise_box.value(),
                                   seed=self.seed_box.value(), device=device,
                                   **self.params.form.values())
        except InputError as exc:
            return self._fail(exc)
        scale = tuple(float(s) for s in layer.scale[-truth.x.ndim:])
        translate = tuple(float(t) for t in layer.translate[-truth.x.ndim:])
        z = None
        if sl is not None:
            z = (float(layer.translate[0] + sl * layer.scale[0]), float(layer.scale[0]))
        units = units_of(truth.modality, layer.metadata)
        where = name + (f", slice {sl}" if sl is not None else "")
        self._publish(problem, Display(scale, tuple(layer.contrast_limits), units, where, z,
                                       translate, _affine_of(layer, sl)))
        return problem

    def _browse_volume_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a volume", "",
            "Volumes (*.nii *.nii.gz *.dcm *.dicom *.tif *.tiff *.npy);;All files (*)")
        if path:
            self.load_volume(path)

    def _browse_volume_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a folder of DICOM files")
        if path:
            self.load_volume(path)

    def load_volume(self, path) -> list | None:
        """Open a volume as image layers, as the plugin's reader does (NIfTI, DICOM file or
        folder: one layer per series, TIFF, ``.npy``), and choose the first as the image to
        simulate from: the new layers, or None after showing the error."""
        try:
            data = read_volume(path)
        except (InputError, MemoryError) as exc:
            return self._fail(exc)
        from napari.layers import Layer

        layers = [self.viewer.add_layer(Layer.create(*ld)) for ld in data]
        self._refresh_layers()
        self.layer_box.setCurrentText(layers[0].name)
        seconds = sum(ly.metadata.get("read_seconds", 0.0) for ly in layers)
        shapes = ", ".join(f"{ly.name} {tuple(ly.data.shape)}" for ly in layers)
        self.info.setText(f"opened {shapes} in {seconds:.2g} s")
        return layers

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Measured sinogram / k-space", "",
                                              "Measurements (*.tif *.tiff *.npy)")
        if path:
            self.load_measurement(path)

    def load_measurement(self, path) -> api.Problem | None:
        """Use a measured file (the CLI's ``measurement.tif``: its sidecar names the operator,
        its parameters and the image size); no truth, so results stay on the [0, 1] scale."""
        try:
            if io.read_sidecar(path).get("operator"):  # the sidecar knows the measurement
                problem = api.load_measurement(path)
            else:
                problem = api.load_measurement(path, operator=self.operator_box.currentText(),
                                               # 0 in the box: unknown, so estimated
                                               noise_std=self.noise_box.value() or None,
                                               **self.params.form.values())
        except InputError as exc:
            return self._fail(exc)
        self._publish(problem, Display((1.0, 1.0), (0.0, 1.0), UNITS["unit"],
                                       Path(path).name))
        return problem

    def _fail(self, exc) -> None:
        self.info.setText(f"Error: {error_message(exc)}")
        notify_error(error_message(exc))

    def _publish(self, problem: api.Problem, display: Display) -> None:
        op = problem.op
        y = problem.y.detach().cpu().numpy()[:, 0]
        y = y[0] if problem.squeeze else y
        meta = problem.describe_measurement()
        if np.iscomplexobj(y):
            y = np.log1p(np.abs(y))
            meta["display"] = "log(1 + |k-space|)"
        # its own frame: stretched over the image's footprint (rows: views / k-space rows,
        # columns: detector bins / k-space columns), so it neither widens the world the images
        # live in nor sits at another size; its contrast from its own values
        h, w = op.image_shape[-2:]
        sy, sx = (display.scale or (1.0, 1.0))[-2:]
        lead = list((display.scale or ())[:-2])[-(y.ndim - 2):] if y.ndim > 2 else []
        scale = (*([1.0] * (y.ndim - 2 - len(lead)) + lead), h * sy / y.shape[-2],
                 w * sx / y.shape[-1])
        translate = None
        if display.translate is not None:
            t = list(display.translate)
            lead_t = t[:-2][-(y.ndim - 2):] if y.ndim > 2 else []
            translate = (*([0.0] * (y.ndim - 2 - len(lead_t)) + lead_t), *t[-2:])
        meta.update({ROLE: "measurement",
                     "frame": f"its {y.shape[-2]} x {y.shape[-1]} values stretched over the "
                              f"image's {h} x {w} pixels"})
        lo, hi = float(np.min(y)), float(np.max(y))
        self._layers["measurement"] = show_layer(
            self.viewer, "measurement", y, metadata=meta, scale=scale, translate=translate,
            contrast_limits=(lo, hi) if hi > lo else None,
            layer=self._layers.get("measurement"))
        x = op.initial(problem.y).detach().cpu().numpy()[:, 0]
        x = x[0] if problem.squeeze else x
        name = f"initial ({op.initial_name})"
        self._layers[name] = show_layer(
            self.viewer, name, to_units(problem, x), scale=display.scale,
            translate=display.translate,
            contrast_limits=display.contrast_limits, layer=self._layers.get(name),
            metadata={"operator": op.describe(), "units": display.units, ROLE: "initial",
                      "modality": problem.truth.modality if problem.truth else None,
                      **({"affine": display.affine} if display.affine else {})})
        self.state.set_problem(problem, display)
        self.info.setText(f"{op.name} of {display.source}: {problem.y.shape[0]} slice(s) of "
                          f"{op.image_shape[0]} x {op.image_shape[1]}, measurement "
                          f"{tuple(op.measurement_shape)}, noise {problem.noise_std:g} "
                          f"({problem.noise_origin})"
                          + (f", modality {problem.truth.modality}" if problem.truth else ""))


def _affine_of(layer, sl: int | None) -> list | None:
    """The source layer's ``metadata["affine"]`` (a reader's: 4x4), of slice ``sl`` when one
    slice of a volume is used; None when the layer has none."""
    affine = (layer.metadata or {}).get("affine")
    if affine is None or np.shape(affine) != (4, 4):
        return None
    return slice_affine(affine, sl) if sl is not None and layer.ndim == 3 else \
        np.asarray(affine, dtype=float).tolist()
