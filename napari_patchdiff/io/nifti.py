"""Reading and writing NIfTI (``.nii``, ``.nii.gz``) with nibabel, in the package layout.

The package holds volumes as ``(slices, rows, cols)``; NIfTI stores ``(i, j, k)`` with the
slices last. :func:`read_nifti` (used through :func:`napari_patchdiff.io.read_image`) moves
them first and :func:`write_nifti` back, moving the affine's columns the same way, so a result
written here overlays its input in other viewers.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import InputError
from .files import check_file_size, check_memory
from .modality import is_real_numeric
from .sidecars import (NIFTI_SUFFIXES, check_spacing, is_singular, read_sidecar, valid_affine,
                       write_with_sidecar)

__all__ = ["read_nifti", "write_nifti"]

_NIFTI_TO_MM = {"mm": 1.0, "meter": 1000.0, "micron": 0.001}


def read_nifti(p: Path) -> tuple[np.ndarray, dict]:
    """NIfTI via nibabel, in the package layout: ``(i, j, k)`` -> ``(k, i, j)``; a 2D image
    (one spatial axis of size 1) keeps its two axes in order, and the affine's columns (mm,
    like the spacing) follow. The sidecar is merged in; the header's geometry wins."""
    import nibabel

    img = nibabel.load(p)
    shape = tuple(int(n) for n in img.shape)
    if any(n != 1 for n in shape[3:]):
        raise InputError(f"{p.name}: a {len(shape)}D NIfTI of shape {shape} (a time series or "
                         "several volumes); save one 3D volume first")
    dtype = np.dtype(img.get_data_dtype())
    nbytes = math.prod(shape) * dtype.itemsize
    if p.name.lower().endswith(".nii"):
        check_file_size(p, int(img.header["vox_offset"]) + nbytes, shape, dtype)
    check_memory(math.prod(shape) * max(dtype.itemsize, 4), f"the volume {p.name}")
    shape3 = (shape + (1, 1, 1))[:3]
    data = np.asanyarray(img.dataobj).reshape(shape3)
    big = [a for a in range(3) if shape3[a] != 1]
    order = [a for a in range(3) if a not in big] + big if len(big) == 2 else [2, 0, 1]
    to_mm = _NIFTI_TO_MM.get(img.header.get_xyzt_units()[0], 1.0)
    zooms = [float(z) * to_mm for z in (tuple(img.header.get_zooms()[:3]) + (1.0,) * 3)[:3]]
    affine = _header_affine(img.header, p)
    affine[:3] *= to_mm
    array = np.transpose(data, order)
    spacing = [zooms[a] for a in order]
    if len(big) == 2:
        array, spacing = array[0], spacing[1:]
    meta = read_sidecar(p)
    meta.update(spacing=spacing, affine=affine[:, order + [3]].tolist())
    return array, meta


def _header_affine(header, p: Path) -> np.ndarray:
    """The header's affine as nibabel chooses it (``get_best_affine``: the sform when its code
    is set, else the qform when its code is set, else one from the voxel sizes), except that a
    singular or non-finite sform gives way to a usable qform; InputError when none is usable
    (an all-zero sform would otherwise be written into every output's sidecar)."""
    forms = [(name, getattr(header, f"get_{name}")()) for name in ("sform", "qform")
             if int(header[f"{name}_code"]) > 0]
    if not forms:
        forms = [("voxel-size", header.get_base_affine())]
    for _, affine in forms:
        affine = np.array(affine, dtype=np.float64)
        if np.isfinite(affine).all() and not is_singular(affine):
            return affine
    names = " and ".join(name for name, _ in forms)
    plural = "s are" if len(forms) > 1 else " is"
    raise InputError(f"{p.name}: the header's {names} affine{plural} singular or not finite "
                     f"(voxels without a position in space, e.g. an all-zero sform); fix the "
                     f"header's geometry, e.g. nibabel's img.set_sform(affine, code=1)")


def write_nifti(path, array, meta: dict | None = None) -> Path:
    """Write a 2D image or 3D volume (slices first) as NIfTI (``.nii`` or ``.nii.gz``), with
    ``meta`` as a JSON sidecar ``<stem>.json``.

    The NIfTI axes are those :func:`napari_patchdiff.io.read_image` reads: ``(slices, rows,
    cols)`` is stored as nibabel's ``(rows, cols, slices)`` (a 2D image as ``(rows, cols, 1)``),
    and the affine is ``meta["affine"]`` with its columns moved the same way, so a result
    overlays its input in other viewers; without an affine, the spacing (mm) gives a diagonal
    one. Float data are written as float32, integers as they are. Atomic like
    :func:`napari_patchdiff.io.write_tiff`. Returns the path.
    """
    import nibabel

    p = Path(path).expanduser()
    if not p.name.lower().endswith(NIFTI_SUFFIXES):
        raise InputError(f"write_nifti needs a .nii or .nii.gz path, got {p.name!r}")
    data = np.asarray(array)
    if np.iscomplexobj(data) or not (is_real_numeric(data.dtype) or data.dtype == bool):
        raise InputError(f"cannot write an array of dtype {data.dtype} as NIfTI")
    if data.ndim not in (2, 3):
        raise InputError(f"write_nifti needs a 2D image or 3D volume, got shape {data.shape}")
    if data.dtype == bool or np.issubdtype(data.dtype, np.floating):
        data = data.astype(np.uint8 if data.dtype == bool else np.float32)
    meta = dict(meta or {})
    affine = _nifti_affine(meta, data.ndim, p)
    vol = np.moveaxis(data[None] if data.ndim == 2 else data, 0, -1)
    img = nibabel.Nifti1Image(vol, affine[:, [1, 2, 0, 3]])
    img.header.set_xyzt_units("mm")
    return write_with_sidecar(p, meta, lambda tmp, safe: nibabel.save(img, tmp))


def _nifti_affine(meta: dict, ndim: int, p: Path) -> np.ndarray:
    """The package-layout affine to write: ``meta["affine"]``, else diagonal from the spacing."""
    if meta.get("affine") is not None:
        return np.array(valid_affine(meta["affine"], p))
    spacing = [float(s) for s in (meta.get("spacing") or (1.0,) * ndim)]
    check_spacing(tuple(spacing), ndim, p)
    z, y, x = ([1.0] + spacing) if ndim == 2 else spacing
    affine = np.zeros((4, 4))
    affine[2, 0], affine[0, 1], affine[1, 2], affine[3, 3] = z, y, x, 1.0
    return affine
