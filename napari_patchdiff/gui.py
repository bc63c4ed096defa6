"""The napari GUI from a script (imports napari and Qt; the rest of the package does not).

See :mod:`napari_patchdiff._qt.scripting`::

    from napari_patchdiff import gui
    s = gui.open_viewer(sample="ct")
    s.simulate("ct-parallel", slice=10, views=20, noise_std=0.2)
    s.reconstruct("admm-tv")
    gui.run()
"""
from ._qt.scripting import Session, open_viewer, run

__all__ = ["Session", "open_viewer", "run"]
