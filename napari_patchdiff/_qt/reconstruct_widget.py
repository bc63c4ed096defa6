"""The Reconstruct dock widget: run a method or draw an ensemble, streaming into layers.

Kept as one module: one dock widget per file (the rule of ``_qt/``), and all of it is that
widget, its inputs, which of them apply to the method and problem, and its scripting face
(:meth:`ReconstructWidget.configure`, :meth:`ReconstructWidget.snapshot`); the layers its runs
stream into are :class:`~napari_patchdiff._qt.layers.RunLayers`.
"""
from __future__ import annotations

import random

from qtpy.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QLabel, QLineEdit,
                            QPushButton, QWidget)

from .. import api
from ..errors import InputError
from ..params import CLUSTER, DEVICE, PRECISION, SEED
from ..plugin.jobs import ReconJob, Update, UpdateKind, bounds_advice, devices, recon_updates
from ..plugin.state import state_for
from ..recon.adapt import ADAPT_PARAMS, adaptation_params
from ..recon.executors import CLUSTER_CHOICES
from ..solvers import SOLVERS
from ..uncertainty import DESIGNS
from .forms import (MAX_SEED, FormSlot, ParamForm, Section, combo, grow_dock, row,
                    scroll_body, show_row, spin)
from .job_panel import JobPanel
from .layers import RunLayers

__all__ = ["ReconstructWidget"]

#: the parameters that set a method's budget, shown first (the rest: "Method parameters")
BUDGET = ("nfe", "iterations")
#: labels that say what a field is where the parameter name alone would not
ADAPT_LABELS = {"steps": "steps per round", "every": "a round every k calls",
                "rank": "adapter rank", "lr": "learning rate", "cg": "CG steps in the loss",
                "tv": "TV weight in the loss", "discrepancy": "stop at noise level x",
                "batch": "slices per adaptation step"}
PARAM_LABELS = {"cg_iterations": "CG iterations per step"}


def _along_z(name: str) -> bool:
    """A parameter that acts along the slice axis: shown for volumes only."""
    return name.startswith("z_") or name in ("tv3d", "lam_z")


class ReconstructWidget(QWidget):
    """Run a method on the current problem in a thread worker and stream the results into
    layers (:class:`~napari_patchdiff._qt.layers.RunLayers`); PSNR/SSIM against the truth
    update live."""

    #: seconds between streamed estimates
    interval = 0.25

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self.results = RunLayers(napari_viewer)  # the layers of the last run
        self._build_method()
        randomise = self._build_run_options()
        self._build_ensemble()
        self._build_adaptation()
        self.panel = JobPanel("Run")
        self.metrics = QLabel("")
        self.metrics.setWordWrap(True)
        self._build_layout(randomise)
        self._connect_signals(randomise)
        self._set_method(self.method_box.currentText())

    def _build_method(self) -> None:
        """The problem line, the method and its parameters (budget first, the rest advanced)."""
        self.problem_label = QLabel("")
        self.problem_label.setWordWrap(True)
        names = SOLVERS.names()
        self.method_box = combo(names, "admm-tv", [SOLVERS.doc(n) for n in names])
        self.budget = FormSlot()  # the method's budget: nfe or iterations
        self.params = FormSlot()  # the rest of its parameters (advanced)

    def _build_run_options(self) -> QPushButton:
        """The run's options, as declared in napari_patchdiff.params.RUN_PARAMS; the seed's
        Randomise button."""
        self.seed_box = spin(SEED.low, min(SEED.high, MAX_SEED), SEED.default)
        self.seed_box.setToolTip(SEED.help)
        randomise = QPushButton("Randomise")
        self.device_box = combo(devices(), DEVICE.default)
        self.device_box.setToolTip(DEVICE.help)
        self.precision_box = combo(PRECISION.choices)  # the first, auto: the default
        self.precision_box.setToolTip(PRECISION.help)
        self.cluster_box = QComboBox()
        self.cluster_box.setEditable(True)
        self.cluster_box.addItems(list(CLUSTER_CHOICES))
        self.cluster_box.setCurrentText(CLUSTER.default)
        self.cluster_box.setToolTip(f"where an ensemble's batches and a volume's windows run: "
                                    f"{CLUSTER.help}")
        return randomise

    def _build_ensemble(self) -> None:
        """An ensemble's size, noise design, bounds (with the offer of a shipped calibration's
        settings) and samples per batch."""
        self.samples_box = spin(1, 1024, 1)
        self.samples_box.setToolTip("posterior samples (diffusion methods): mean, std, bounds")
        self.design_box = combo(DESIGNS)
        self.design_box.setToolTip("iid noise, antithetic pairs (negated noise), or rqmc groups of "
                                   "4 (an antithetic Latin hypercube)")
        self.calibration_box = QComboBox()
        self.calibration_box.setEditable(True)
        self.calibration_box.addItems(["auto", "none"])
        self.calibration_box.setToolTip(
            "per-pixel bounds of an ensemble: auto = calibrated where a shipped calibration fits "
            "this prior, operator, noise, method and ensemble size (else the sample quantiles); "
            "none = the sample quantiles; or the path of a calibration.json written by "
            "`napari-patchdiff calibrate`")
        self.bounds_info = QLabel("")
        self.bounds_info.setWordWrap(True)
        self.use_calibrated_button = QPushButton("")
        self.use_calibrated_button.setToolTip("set the budget and ensemble size of the shipped "
                                              "calibration, so that the bounds are calibrated")
        self._calibrated_settings: dict = {}
        self.batch_box = spin(0, 1024, 0, "auto")
        self.batch_box.setToolTip("samples per sampler run (auto: about 8 slices at once)")

    def _build_adaptation(self) -> None:
        """Test-time adaptation: the switch, its parameters, saving the adapted prior."""
        self.adapt_box = QCheckBox("adapt the prior to this measurement")
        self.adapt_box.setToolTip("test-time adaptation: low-rank adapters trained on the "
                                  "measurement while reconstructing (its parameters: the "
                                  "Adaptation section; empty fields: the tuned defaults)")
        self.adapt_form = ParamForm(ADAPT_PARAMS, skip=("seed", "holdout"), prefill=False,
                                    labels=ADAPT_LABELS)
        self.save_prior_button = QPushButton("Save adapted prior…")
        self.save_prior_button.setEnabled(False)
        self.save_prior_button.setToolTip("save the prior adapted by the last run (enabled after "
                                          "a run with adaptation on the current problem)")
        self._adapted = None

    def _build_layout(self, randomise: QPushButton) -> None:
        """The main form, then the collapsible sections, in a scroll area above the run panel."""
        self.form = form = QFormLayout()
        form.addRow(self.problem_label)
        form.addRow("method", self.method_box)
        form.addRow(self.budget)
        form.addRow("samples", self.samples_box)
        form.addRow("noise design", self.design_box)
        form.addRow("bounds", self.calibration_box)
        form.addRow(self.bounds_info)
        form.addRow(self.use_calibrated_button)
        form.addRow(self.adapt_box)
        self.method_section = Section("Method parameters")
        self.method_section.form.addRow(self.params)
        self.adapt_section = Section("Adaptation parameters")
        self.adapt_section.form.addRow(self.adapt_form)
        self.run_section = Section("Seed, device, batches")
        rform = self.run_section.form
        rform.addRow("seed", row(self.seed_box, randomise))
        rform.addRow("device", self.device_box)
        rform.addRow("precision", self.precision_box)
        rform.addRow("cluster", self.cluster_box)
        rform.addRow("samples per batch", self.batch_box)
        self.sections = [self.method_section, self.adapt_section, self.run_section]
        self.panel.setContentsMargins(9, 0, 9, 6)
        layout = scroll_body(self, footer=self.panel, min_height=150, expanding=True)
        layout.addLayout(form)
        layout.addWidget(self.metrics)
        layout.addWidget(self.save_prior_button)
        for section in self.sections:
            layout.addWidget(section)
        layout.addStretch()

    def _connect_signals(self, randomise: QPushButton) -> None:
        self.method_box.currentTextChanged.connect(self._set_method)
        randomise.clicked.connect(lambda: self.seed_box.setValue(random.randint(0, MAX_SEED)))
        self.panel.run_button.clicked.connect(self.run)
        self.adapt_box.toggled.connect(self._refresh)
        self.samples_box.valueChanged.connect(self._refresh)
        self.calibration_box.currentTextChanged.connect(self._refresh)
        self.use_calibrated_button.clicked.connect(self.use_calibrated_settings)
        self.save_prior_button.clicked.connect(self._save_prior_dialog)
        self.state.problem_changed.connect(self._problem_changed)
        self.state.prior_changed.connect(self._refresh)

    def showEvent(self, event) -> None:
        """The first time the dock shows, give it most of the height of its dock column (the
        docks opened before it keep what they need to show their essentials)."""
        super().showEvent(event)
        if not getattr(self, "_sized", False):
            self._sized = True
            grow_dock(self, 0.6)

    def _set_method(self, name: str) -> None:
        params = SOLVERS.get(name).params
        self.budget.set([p for p in params if p.name in BUDGET], prefill=False)
        self.params.set([p for p in params if p.name not in BUDGET], skip=("seed",),
                        prefill=False, labels=PARAM_LABELS)
        for w in self.budget.form.inputs.values():
            if isinstance(w, QLineEdit):
                w.editingFinished.connect(self._refresh)
        self._refresh()

    def _forms(self):
        return (self.budget.form, self.params.form)

    def _problem_changed(self, *_) -> None:
        self._adapted = None  # adapted to the previous measurement
        self.save_prior_button.setEnabled(False)
        self._refresh()

    def _refresh(self, *_) -> None:
        """Enable diffusion methods only with a prior; show only the fields that apply to this
        method and problem (z parameters for volumes only); show the problem, the current
        defaults and which bounds an ensemble would give."""
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
        ensemble = sampler and self.samples_box.value() > 1
        for w in (self.samples_box, self.design_box, self.calibration_box):
            show_row(self.form, w, sampler)
        show_row(self.form, self.design_box, ensemble)
        show_row(self.form, self.calibration_box, ensemble)
        show_row(self.run_section.form, self.batch_box, ensemble)
        show_row(self.run_section.form, self.precision_box, diffusion)
        show_row(self.form, self.adapt_box, diffusion)
        self.save_prior_button.setVisible(diffusion)
        self.adapt_section.setVisible(diffusion)
        self.adapt_form.setEnabled(diffusion and self.adapt_box.isChecked())
        problem = self.state.problem
        volume = problem is not None and problem.y.shape[0] > 1
        self.params.form.hide_params(
            [] if volume else [n for n in self.params.form.inputs if _along_z(n)])
        self.method_section.setVisible(bool(self.params.form.shown()))
        self._show_bounds_advice(ensemble)
        if problem is None:
            self.problem_label.setText("No problem yet: simulate or load one in the "
                                       "Measurement widget.")
            return
        self.problem_label.setText(f"Problem: {problem.op.name}, {problem.y.shape[0]} slice(s) "
                                   f"of {self.state.display.source}; prior: "
                                   f"{self.state.prior or 'none'}")
        try:
            defaults = api.method_params(problem, method)
            for form in self._forms():
                form.show_defaults(defaults)
            self.adapt_form.show_defaults(adaptation_params(
                self.state.prior, problem.op, problem.noise_std, method))
        except InputError:
            pass

    def _show_bounds_advice(self, ensemble: bool) -> None:
        """Say which bounds an ensemble would show and why; offer the settings of a shipped
        calibration that would apply with another budget or ensemble size."""
        text, self._calibrated_settings = "", {}
        problem, method = self.state.problem, self.method_box.currentText()
        if ensemble and problem is not None:
            try:
                text, self._calibrated_settings = bounds_advice(
                    problem, method, self.state.prior, self.method_values(),
                    self.samples_box.value(), self._calibration(),
                    adapt=self.adapt_box.isChecked(), level=ReconJob.level)
            except InputError as exc:
                text = str(exc)
        self.bounds_info.setText(f"Bounds: {text}" if text else "")
        show_row(self.form, self.bounds_info, bool(text))
        offer = self._calibrated_settings
        self.use_calibrated_button.setText(
            "Use " + ", ".join(f"{k} {v}" for k, v in offer.items()) + " (calibrated bounds)")
        show_row(self.form, self.use_calibrated_button, bool(offer))

    def use_calibrated_settings(self) -> dict:
        """Set the budget / ensemble size that a shipped calibration fits (see the bounds
        line); the settings set."""
        offer = dict(self._calibrated_settings)
        if offer:
            self.configure(**offer)
        return offer

    def configure(self, method: str | None = None, seed: int | None = None,
                  device: str | None = None, samples: int | None = None,
                  design: str | None = None, batch: int | None = None, adapt=None,
                  calibration: str | None = None, cluster: str | None = None,
                  precision: str | None = None, **params) -> None:
        """Set the inputs as a user would (``params``: the method's parameters; ``adapt``: True
        or a dict of adaptation parameters switches test-time adaptation on, False off;
        ``calibration``: "auto", "none" or a calibration file; ``cluster``: "local", "ray"
        or "ray:ADDRESS")."""
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
        if calibration is not None:
            self.calibration_box.setCurrentText(str(calibration))
        if cluster is not None:
            self.cluster_box.setCurrentText(str(cluster))
        if precision is not None:
            self.precision_box.setCurrentText(PRECISION.check(precision))
        if adapt is not None:
            self.adapt_box.setChecked(bool(adapt))
            self.adapt_form.set_values(adapt if isinstance(adapt, dict) else {})
        for name in params:
            if not any(name in form for form in self._forms()):
                raise InputError(f"no parameter {name!r} here; choose from "
                                 f"{sorted(n for f in self._forms() for n in f.inputs)}")
        for form in self._forms():
            form.set_values({k: v for k, v in params.items() if k in form})
        self._refresh()

    def method_values(self) -> dict:
        """The method parameters set (the budget and the advanced ones that apply)."""
        return {**self.budget.form.values(), **self.params.form.values()}

    def snapshot(self) -> ReconJob:
        """The widget's values as a frozen job (InputError if something is missing)."""
        if self.state.problem is None:
            raise InputError("no problem yet: simulate or load one in the Measurement widget")
        method = self.method_box.currentText()
        diffusion = api.needs_prior(method)
        if diffusion and not self.state.prior:
            raise InputError(f"method {method!r} needs a prior: choose one in the Prior widget")
        return ReconJob(method, self.method_values(), seed=self.seed_box.value(),
                        device=self.device_box.currentText(),
                        samples=self.samples_box.value() if SOLVERS.get(method).sampler else 1,
                        design=self.design_box.currentText(),
                        batch=self.batch_box.value() or None,
                        prior=self.state.prior if diffusion else None, interval=self.interval,
                        adapt=((self.adapt_form.values() or True)
                               if diffusion and self.adapt_box.isChecked() else None),
                        calibration=self._calibration(), cluster=self._cluster(),
                        precision=self.precision_box.currentText() if diffusion else None)

    def _cluster(self):
        from ..recon.executors import parse_cluster

        text = self.cluster_box.currentText().strip() or CLUSTER.default
        parse_cluster(text)  # InputError (shown in the panel) for a bad choice or no ray
        return None if text == CLUSTER.default else text

    def _calibration(self):
        text = self.calibration_box.currentText().strip() or "auto"
        return None if text == "none" else text

    def run(self):
        """Start a run (no-op while one runs); the worker, or None after showing the error.
        Its layers are named ``<method> #<n>`` (n: the first free index), the ensemble's
        ``<method> #<n> mean`` etc. (:class:`~napari_patchdiff._qt.layers.RunLayers`)."""
        if self.panel.running:
            return None
        try:
            job = self.snapshot()
        except InputError as exc:
            self.panel.fail(exc)
            return None
        problem = self.state.problem
        self.results.begin(job, self.state.display)
        self._adapted = None  # the button saves the prior adapted by the last run only
        self.save_prior_button.setEnabled(False)
        self.metrics.setText("")
        what = f"{job.samples} samples of {job.method}" if job.samples > 1 else job.method
        self.panel.start(lambda token, pace: recon_updates(job, problem, token,
                                                           self.state.load_prior, pace),
                         self._on_update, what, job.interval)
        return self.panel.worker

    @property
    def layer_names(self) -> dict[str, str]:
        """The layers of the last run: stream ("estimate", "samples", "mean", "std", ...) ->
        layer name."""
        return self.results.names

    def save_prior(self, path) -> str:
        """Save the prior adapted by the last run (see :meth:`AdaptingPrior.save`)."""
        if self._adapted is None:
            raise InputError("no adapted prior: the last run on this problem did not adapt "
                             "(tick 'adapt the prior to this measurement' and run)")
        return self._adapted.save(path, adapted_to=self.results.display.source)

    def _save_prior_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the adapted prior", "",
                                              "Checkpoints (*.safetensors)")
        if path:
            try:
                self.panel.status.setText(f"saved {self.save_prior(path)}")
            except InputError as exc:
                self.panel.fail(exc)

    # -- results ------------------------------------------------------------------------------
    def _on_update(self, u: Update) -> None:
        self.results.update(u)
        if u.kind is UpdateKind.DONE and u.prior is not None:
            self._adapted = u.prior
            self.save_prior_button.setEnabled(True)
        self.metrics.setText(self.results.metrics_text(u) or self.metrics.text())
        self.panel.status.setText(self.results.status_text(u))
