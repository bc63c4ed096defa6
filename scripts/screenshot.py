"""Render the plugin's real workflow in a napari window -> docs/napari_window.png.

    xvfb-run -a .venv/bin/python scripts/screenshot.py      (or run it on a desktop)
    xvfb-run -a .venv/bin/python scripts/screenshot.py --volume    -> docs/napari_volume_3d.png

Opens the CT sample through the plugin (File > Open Sample) with the three dock widgets, simulates
20-view CT of slice 10 in the Measurement widget, chooses the shipped prior ``ct`` in the Prior
widget and draws 4 antithetic DDS samples (15 network evaluations each) in the Reconstruct widget,
then shows the sample volume, the FBP, the samples, their mean, std and upper 90% bound in grid
mode and saves a full-window screenshot of a 1366 x 768 window, a laptop screen (about two
minutes on one CPU core). Regenerate it whenever the GUI changes.

``--volume``: 20-view CT of the whole 16-slice sample volume, reconstructed by DDS (15
evaluations, its volume defaults; window by window, streaming into the layer), shown in napari's
3D display beside FBP (attenuated maximum intensity projection, the sample's 5 mm slice
spacing).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from qtpy.QtWidgets import QApplication

from napari_patchdiff._qt.scripting import open_viewer

OUT = Path(__file__).resolve().parents[1] / "docs" / "napari_window.png"
OUT_3D = OUT.with_name("napari_volume_3d.png")
SHOWN = ("samples", "mean", "std", "upper (sample quantile)")  # of the run, beside these:
SOURCES = ("CT lung (HU)", "initial (fbp)")
SIZE = (1366, 768)  # a laptop screen: the docks must fit it (tests/test_widgets.py)


def main() -> None:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    s = open_viewer(sample="ct", show=True, title="napari-patchdiff")
    viewer = s.viewer
    viewer.window.resize(*SIZE)
    s.simulate("ct-parallel", slice=10, views=20, noise_std=0.2)
    s.use_prior("ct")
    s.reconstruct("dds", nfe=15, samples=4, design="antithetic", seed=0)
    if not s.wait(timeout=900):
        raise SystemExit("the sampling run did not finish in 15 minutes")
    print(s.reconstructor.panel.status.text(), "|", s.reconstructor.metrics.text())
    names = s.reconstructor.layer_names  # "samples" -> "dds #1 samples"...
    shown = SOURCES + tuple(names[k] for k in SHOWN)
    for layer in viewer.layers:
        layer.visible = layer.name in shown
    viewer.canvas.grid.enabled = True
    viewer.canvas.grid.shape = (2, 3)
    QApplication.processEvents()
    viewer.reset_view()
    QApplication.processEvents()
    OUT.parent.mkdir(exist_ok=True)
    img = viewer.screenshot(str(OUT), canvas_only=False)
    print(f"wrote {OUT} {np.asarray(img).shape} in {time.perf_counter() - t0:.0f} s")
    viewer.close()


def volume() -> None:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    s = open_viewer(sample="ct", show=True, title="napari-patchdiff")
    viewer = s.viewer
    viewer.window.resize(*SIZE)
    s.simulate("ct-parallel", views=20, noise_std=0.2)  # every slice: a volume
    s.use_prior("ct")
    s.reconstruct("dds", nfe=15, seed=0)
    if not s.wait(timeout=1800):
        raise SystemExit("the volume run did not finish in 30 minutes")
    print(s.reconstructor.panel.status.text(), "|", s.reconstructor.metrics.text())
    shown = ("initial (fbp)", s.reconstructor.layer_names["estimate"])
    for layer in viewer.layers:
        layer.visible = layer.name in shown
        if layer.visible:
            layer.rendering = "attenuated_mip"
            layer.contrast_limits = (-900, 400)
    viewer.dims.ndisplay = 3
    viewer.canvas.grid.enabled = True
    viewer.canvas.grid.shape = (1, 2)
    QApplication.processEvents()
    viewer.reset_view()  # resets the camera's angles too: set them after
    viewer.camera.angles = (-60, 20, 150)  # oblique, from below the chest: ribs and spine
    viewer.camera.zoom *= 1.2
    QApplication.processEvents()
    img = viewer.screenshot(str(OUT_3D), canvas_only=False)
    print(f"wrote {OUT_3D} {np.asarray(img).shape} in {time.perf_counter() - t0:.0f} s")
    viewer.close()


if __name__ == "__main__":
    volume() if "--volume" in sys.argv[1:] else main()
