"""npe2 readers and writers: float32 TIFF + JSON sidecar, NIfTI and DICOM, with their geometry.

Writers: :func:`write_image` saves an image layer with :func:`napari_patchdiff.io.write_tiff`
(its ``layer.metadata``, e.g. a reconstruction's report, goes into the sidecar; ``spacing`` is
the layer's scale); :func:`write_nifti_layer` saves it as ``.nii`` / ``.nii.gz`` with the affine
in ``layer.metadata["affine"]`` (the one the volume was read with, which the plugin's result
layers carry too), else one from the layer's scale and translate.

Readers: :func:`get_reader` opens a ``.tif``/``.tiff`` that has a sidecar (other TIFFs are left
to napari's own reader); :func:`get_volume_reader` opens NIfTI files, DICOM files and folders
of DICOM files (one layer per series) with :func:`napari_patchdiff.io.read_image`: the layer's
``scale`` and ``translate`` come from the affine (:func:`napari_patchdiff.io.geometry.
grid_of_affine`; ``metadata["geometry"]`` says what an oblique affine loses in the viewer),
the metadata holds the reader's (``modality``, ``units``, ``spacing``, ``affine``, ``source``).
Paths that are not theirs give None (napari then tries other readers); a file they should read
but cannot raises :class:`~napari_patchdiff.errors.InputError` with one line, which napari
shows (File > Open, drag and drop) or raises (``viewer.open``). No Qt here.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .. import io
from ..errors import InputError
from ..io.geometry import affine_of_grid, grid_of_affine

#: metadata a file may carry from an earlier session that must not come back: the plugin's
#: role of the layer it was saved from, and notes about how that layer was read
_STALE = ("napari_patchdiff_role", "geometry", "read_seconds")


def write_image(path: str, data, attributes: dict) -> list[str]:
    """npe2 single-layer writer for image layers."""
    meta = dict(attributes.get("metadata") or {})
    scale = attributes.get("scale")
    if scale is not None:
        meta["spacing"] = [float(s) for s in scale]
    meta.setdefault("name", attributes.get("name"))
    return [str(io.write_tiff(path, data, meta))]


def write_nifti_layer(path: str, data, attributes: dict) -> list[str]:
    """npe2 single-layer writer: an image layer as NIfTI with its affine (see the module)."""
    meta = {k: v for k, v in dict(attributes.get("metadata") or {}).items() if k not in _STALE}
    data = np.asarray(data)
    scale = attributes.get("scale")
    if scale is not None and data.ndim in (2, 3):
        meta["spacing"] = [float(s) for s in scale]
        if meta.get("affine") is None:
            meta["affine"] = affine_of_grid(scale, attributes.get("translate"))
    meta.setdefault("name", attributes.get("name"))
    try:
        return [str(io.write_nifti(path, data, meta))]
    except InputError as exc:  # napari turns a writer's ValueError into "not a valid writer"
        _tell(f"not saved: {exc}", error=True)
        raise


def get_reader(path):
    """npe2 reader hook: a reader for a TIFF with a JSON sidecar, else None."""
    if not isinstance(path, (str, Path)) or Path(path).suffix.lower() not in io.TIFF_SUFFIXES:
        return None
    return read_tiff if io.sidecar_path(path).is_file() else None


def read_tiff(path) -> list[tuple]:
    data, meta = io.read_image(path)
    kwargs = {"name": meta.get("name") or Path(path).stem, "metadata": meta, "colormap": "gray"}
    if meta.get("spacing"):
        kwargs["scale"] = tuple(meta["spacing"])
    return [(data, kwargs, "image")]


def get_volume_reader(path):
    """npe2 reader hook: :func:`read_volume` for a NIfTI file, a DICOM file or a folder holding
    DICOM files; None for anything else (and for several paths at once)."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, (str, Path)):
        return None
    p = Path(path)
    if p.is_dir():
        return read_volume if _holds_dicom(p) else None
    return read_volume if p.name.lower().endswith(io.NIFTI_SUFFIXES + io.DICOM_SUFFIXES) else None


def _holds_dicom(folder: Path, limit: int = 64) -> bool:
    """Whether one of the first ``limit`` files of ``folder`` is named ``*.dcm`` or starts like
    a DICOM file (``DICM`` after the 128-byte preamble): cheap, no header parsed."""
    for i, f in enumerate(sorted(folder.iterdir())):
        if i >= limit:
            return False
        if not f.is_file():
            continue
        if f.name.lower().endswith(io.DICOM_SUFFIXES):
            return True
        try:
            with open(f, "rb") as fh:
                if fh.read(132)[128:] == b"DICM":
                    return True
        except OSError:
            continue
    return False


def read_volume(path) -> list[tuple]:
    """Layer data for a NIfTI, DICOM (file or folder: one layer per series), TIFF or ``.npy``
    path read with :func:`napari_patchdiff.io.read_image`; InputError (one line) if it cannot
    be read."""
    if isinstance(path, (list, tuple)):
        (path,) = path
    p = Path(path)
    if p.is_dir():
        series = io.list_dicom_series(p)
        if len(series) == 1:
            return [_layer_data(p, None, series[0])]
        return [_layer_data(p, s["uid"], s) for s in series]
    return [_layer_data(p, None, None)]


def _layer_data(p: Path, uid: str | None, series: dict | None) -> tuple:
    start = time.perf_counter()
    data, meta = io.read_image(p, series=uid)
    seconds = time.perf_counter() - start
    meta = {k: v for k, v in meta.items() if k not in _STALE}
    kwargs = {"name": _name(p, meta, series), "colormap": "gray"}
    if meta.get("affine") is not None:
        scale, translate, note = grid_of_affine(meta["affine"], data.ndim)
        kwargs.update(scale=scale, translate=translate)
        meta["geometry"] = note
        if note.startswith("oblique"):
            _tell(f"{kwargs['name']}: {note}")
    elif meta.get("spacing"):
        kwargs["scale"] = tuple(meta["spacing"])
        meta["geometry"] = "no affine: scale from the spacing, voxel 0 at the origin"
    meta["read_seconds"] = round(seconds, 3)
    kwargs["metadata"] = meta
    return (data, kwargs, "image")


def _name(p: Path, meta: dict, series: dict | None) -> str:
    """The series description; else the file name without its suffix; for a folder holding
    several series without descriptions, the folder name and the series number."""
    if meta.get("description"):
        return str(meta["description"])
    name = p.name
    for suffix in sorted(io.NIFTI_SUFFIXES + io.DICOM_SUFFIXES + io.TIFF_SUFFIXES
                         + io.NPY_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    if series is not None and series.get("number") is not None:
        return f"{name} series {series['number']}"
    return name


def _tell(message: str, error: bool = False) -> None:
    """A napari notification (info, or error), when napari is there."""
    try:
        from napari.utils.notifications import show_error, show_info
    except ImportError:  # used without napari
        return
    (show_error if error else show_info)(message)

