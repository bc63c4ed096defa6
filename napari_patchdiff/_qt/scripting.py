"""Drive the plugin from a script: a viewer with the three dock widgets, a few calls::

    from napari_patchdiff import gui
    s = gui.open_viewer(sample="ct")                     # viewer + Measurement/Prior/Reconstruct
    s.simulate("ct-parallel", slice=10, views=20, noise_std=0.2)
    s.use_prior("ct")
    s.reconstruct("dds", nfe=20, samples=4, design="antithetic")   # runs in the background
    gui.run()                                            # napari's event loop

Every call sets the widgets as a user would (the GUI shows what the script did), then presses
their buttons. :meth:`Session.wait` blocks until a background job ends (for headless scripts).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from ..errors import InputError
from .measurement_widget import MeasurementWidget
from .prior_widget import PriorWidget
from .reconstruct_widget import ReconstructWidget

__all__ = ["Session", "open_viewer", "run"]

PLUGIN = "napari-patchdiff"


@dataclass
class Session:
    """A viewer with the plugin docked; the widgets stay reachable for finer control."""

    viewer: object
    measurement: MeasurementWidget
    prior: PriorWidget
    reconstructor: ReconstructWidget

    def simulate(self, operator: str = "ct-parallel", *, layer: str | None = None,
                 slice: int | None = None, noise_std: float = 0.0, seed: int = 0,
                 modality: str | None = None, **op_params):
        """Simulate a measurement of ``layer`` (default: the first image layer)."""
        m = self.measurement
        m.configure(layer=layer, slice=-1 if slice is None else slice, operator=operator,
                    noise_std=noise_std, seed=seed, modality=modality or "auto", **op_params)
        problem = m.simulate()
        if problem is None:
            raise InputError(m.info.text())
        return problem

    def use_prior(self, source: str | None) -> None:
        """A shipped prior name or a checkpoint path (None: no prior)."""
        if not self.prior.use(source):
            raise InputError(self.prior.info.toPlainText())

    def reconstruct(self, method: str = "admm-tv", *, samples: int = 1, design: str = "iid",
                    seed: int = 0, device: str = "cpu", batch: int | None = None, adapt=None,
                    calibration: str | None = None, cluster: str | None = None, wait=False,
                    **params):
        """Start ``method`` in the background (``params``: its parameters; ``adapt``: True or a
        dict of adaptation parameters for test-time adaptation, False off, None as set;
        ``calibration``: an ensemble's bounds, "auto", "none" or a calibration file;
        ``cluster``: "local", "ray" or "ray:ADDRESS", None as set); the worker."""
        r = self.reconstructor
        r.configure(method=method, seed=seed, device=device, samples=samples, design=design,
                    batch=batch or 0, adapt=adapt, calibration=calibration, cluster=cluster,
                    **params)
        worker = r.run()
        if worker is None:
            raise InputError(r.panel.status.text())
        if wait:
            self.wait()
        return worker

    def wait(self, timeout: float | None = None) -> bool:
        """Process Qt events until no job runs; False on timeout."""
        from qtpy.QtWidgets import QApplication

        t0 = time.perf_counter()
        while self.reconstructor.panel.running or self.prior.panel.running:
            QApplication.processEvents()
            time.sleep(0.01)
            if timeout is not None and time.perf_counter() - t0 > timeout:
                return False
        QApplication.processEvents()
        return True


def open_viewer(sample: str | None = "ct", viewer=None, show: bool = True,
                title: str = "napari-patchdiff") -> Session:
    """A napari viewer (new unless given) with the three dock widgets and, unless ``sample`` is
    None, the sample volume ("ct" or "mri") opened through the plugin."""
    import napari

    if viewer is None:
        viewer = napari.Viewer(title=title, show=show)
    if sample:
        viewer.open_sample(PLUGIN, sample)
    widgets = [viewer.window.add_plugin_dock_widget(PLUGIN, name)[1]
               for name in ("Measurement", "Prior", "Reconstruct")]
    return Session(viewer, *widgets)


def run() -> None:
    """napari's event loop (returns when the window closes)."""
    import napari

    napari.run()
