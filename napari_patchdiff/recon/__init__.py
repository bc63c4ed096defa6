"""Reconstruction: a problem and the runs that solve it.

The path a run follows: :mod:`.problem` (truth, operator, measurement) -> :mod:`.runs` (the one
run driver: parameters, prior, step generator, report) -> :mod:`.executors` (here or on a Ray
cluster, reached through :mod:`.ray_cluster`; a volume's windows from :mod:`.volumes`) -> a
solver's generator (:mod:`napari_patchdiff.solvers`). Beside them: :mod:`.adapt` (test-time
adaptation of the prior, its tuned values in ``adapt.toml``), :mod:`.metrics` (PSNR, SSIM) and
:mod:`.memory` (up-front memory estimates).

This layer sits on :mod:`napari_patchdiff.io`, :mod:`~napari_patchdiff.operators`,
:mod:`~napari_patchdiff.priors` and :mod:`~napari_patchdiff.solvers`; ensembles
(:mod:`napari_patchdiff.uncertainty`), the API, the command line and the GUI's jobs build on it.
Nothing is imported here: ``from napari_patchdiff.recon import runs``.
"""
