"""The napari plugin's Qt-free half: what the dock widgets of :mod:`napari_patchdiff._qt` run
and share, usable from scripts and tests without a display.

:mod:`.jobs`: background jobs as generators of typed updates (reconstructions, ensembles,
training), driven by the Qt thread workers or by any thread; :mod:`.state`: the model the
widgets of one viewer share (problem, prior, display). Neither imports Qt or napari; they build
on :mod:`napari_patchdiff.recon`, :mod:`~napari_patchdiff.uncertainty` and
:mod:`~napari_patchdiff.training`, beside :mod:`napari_patchdiff.api`. Nothing is imported here.
"""
