"""Render a real napari window with the plugin's sample data and reconstructions -> docs/.

    xvfb-run -a python scripts/screenshot.py      (or run it on a desktop)

Opens the CT sample through the plugin (File > Open Sample), takes its slice 10, simulates 20-view CT
with the Python API, reconstructs it with FBP and ADMM-TV, shows them beside the sample volume at
that slice (grid mode) and saves a full-window screenshot. Regenerate it whenever the code changes.
"""
from __future__ import annotations

from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_patchdiff import api

OUT = Path(__file__).resolve().parents[1] / "docs" / "napari_window.png"


def main() -> None:
    viewer = napari.Viewer(title="napari-patchdiff", show=True)
    viewer.window.resize(1400, 800)
    viewer.open_sample("napari-patchdiff", "ct")
    volume = viewer.layers[-1]
    truth = api.truth_from_array(volume.data, volume.metadata, slice=10)
    scale = tuple(volume.scale[1:])
    problem = api.simulate(truth, "ct-parallel", noise=0.2, seed=0, views=20)
    for method in ("fbp", "admm-tv"):
        result = api.solve(problem, method)
        r = result.report
        viewer.add_image(truth.to_units(result.recon), name=f"{method} {r['psnr']:.1f} dB",
                         colormap="gray", contrast_limits=(-1000, 600), scale=scale,
                         metadata={"report": r})
    viewer.add_image(truth.to_units(truth.x), name="truth (slice 10)", colormap="gray",
                     contrast_limits=(-1000, 600), scale=scale)
    viewer.dims.current_step = (10, 0, 0)
    viewer.grid.enabled = True
    viewer.grid.shape = (2, 2)
    QApplication.processEvents()
    viewer.reset_view()
    QApplication.processEvents()
    OUT.parent.mkdir(exist_ok=True)
    img = viewer.screenshot(str(OUT), canvas_only=False)
    print(f"wrote {OUT} {np.asarray(img).shape}")
    viewer.close()


if __name__ == "__main__":
    main()
