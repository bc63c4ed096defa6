"""Reading and writing images and volumes, with their metadata: the package's one entry
point for image files, and the bottom layer beside :mod:`napari_patchdiff.operators` (it
imports nothing of the package but its vocabulary: errors, conventions). The public functions
are re-exported here from the modules that hold them:

* :mod:`~napari_patchdiff.io.images`: :func:`read_image` over every format, TIFF and NumPy,
  :func:`write_tiff`, the measurements;
* :mod:`~napari_patchdiff.io.nifti` and :mod:`~napari_patchdiff.io.dicom`: those formats;
* :mod:`~napari_patchdiff.io.sidecars`: JSON sidecars, geometry checks, the suffixes;
* :mod:`~napari_patchdiff.io.modality`: :func:`infer_modality`;
* :mod:`~napari_patchdiff.io.files`: atomic writes, the umask, size and memory checks;
* :mod:`~napari_patchdiff.io.geometry`: an affine as a viewer's scale and translate;
* :mod:`~napari_patchdiff.io.samples`: the shipped sample volumes.

Arrays are 2D ``(rows, cols)`` or 3D ``(slices, rows, cols)``. Metadata is a plain dict; the
keys every reader fills (``None`` where unknown) are

``modality``  ``"ct"``, ``"mri"``, ``"unit"`` (already on [0, 1]) or ``None``
``units``     ``"HU"`` for CT, ``"scanner units"`` for MRI, ...
``spacing``   voxel size in mm as a tuple, ``(z, y, x)`` for volumes or ``(y, x)`` for images
``affine``    4x4 list of floats mapping ``(slice, row, col, 1)`` to world mm (RAS+, as NIfTI);
              a 2D image is the one slice of ``(1, rows, cols)``
``source``    the path read

Formats: TIFF (``.tif``, ``.tiff``; a JSON sidecar ``<stem>.json`` beside it is merged in),
NumPy (``.npy``; sidecar merged too), NIfTI (``.nii``, ``.nii.gz``; sidecar merged, the header's
geometry wins, see :mod:`napari_patchdiff.io.nifti`) and DICOM (a ``.dcm`` file or a directory
holding one series, see :mod:`napari_patchdiff.io.dicom`). Every bad input raises
:class:`~napari_patchdiff.errors.InputError` with a one-line message meant for the user: a
header that declares more data than the file holds, an array needing more than half of the
memory (:func:`check_memory`), a modality that cannot be told safely (:func:`infer_modality`).

Every file written here goes through a temporary file in the target folder moved into place,
with the permissions of an ordinary new file (``0o666`` less the umask); other modules can do
the same with :func:`atomic_output` / :func:`atomic_write_text`
(:mod:`napari_patchdiff.io.files`).
"""
from __future__ import annotations

from .files import apply_umask, atomic_output, atomic_write_text, check_memory, physical_memory
from .images import (list_dicom_series, read_image, read_measurement, write_measurement,
                     write_tiff)
from .modality import AMBIGUOUS_MAX, HU_AIR_BELOW, HU_FLOOR, guess_modality, infer_modality
from .nifti import write_nifti
from .sidecars import (DICOM_SUFFIXES, NIFTI_SUFFIXES, NPY_SUFFIXES, SUPPORTED, TIFF_SUFFIXES,
                       json_safe, read_sidecar, sidecar_path)

__all__ = [
    "AMBIGUOUS_MAX",
    "DICOM_SUFFIXES",
    "HU_AIR_BELOW",
    "HU_FLOOR",
    "NIFTI_SUFFIXES",
    "NPY_SUFFIXES",
    "SUPPORTED",
    "TIFF_SUFFIXES",
    "apply_umask",
    "atomic_output",
    "atomic_write_text",
    "check_memory",
    "guess_modality",
    "infer_modality",
    "json_safe",
    "list_dicom_series",
    "physical_memory",
    "read_image",
    "read_measurement",
    "read_sidecar",
    "sidecar_path",
    "write_measurement",
    "write_nifti",
    "write_tiff",
]
