"""The shipped sample volumes: they live in :mod:`napari_patchdiff.io.samples` with the rest of
the reading; this module keeps the old import path (``napari_patchdiff.samples.load_sample``)."""
from .io.samples import (CT_CONTRAST_LIMITS, SAMPLES, ct_sample, load_sample, mni_sample,
                         mri_sample)

__all__ = ["SAMPLES", "CT_CONTRAST_LIMITS", "load_sample", "ct_sample", "mri_sample", "mni_sample"]
