"""Reading DICOM: one file, or a directory holding the slices of one series.

Used through :func:`napari_patchdiff.io.read_image` (the one entry point for reading images).
A series is ordered along its slice normal, the cross product of the two direction cosines of
``ImageOrientationPatient`` (row direction x column direction), each slice's
``ImagePositionPatient`` projected on it, so axial, sagittal, coronal and oblique series all
come in spatial order (ascending along the normal). A series is refused
(:class:`~napari_patchdiff.errors.InputError`) when its slices have different orientations,
pixel spacings or sizes, when two slices share a position, or when the gaps between slices
differ by more than :data:`GAP_TOLERANCE` (missing slices). Without ``ImagePositionPatient``
the slices are ordered by ``InstanceNumber``; without ``ImageOrientationPatient`` they are
taken to be axial.

The metadata keeps the geometry: ``orientation`` (the 6 direction cosines), ``origin`` (the
first slice's position, mm, DICOM patient coordinates LPS), ``spacing`` (``z`` is the median gap
along the normal) and ``affine`` (4x4, maps ``(slice, row, col, 1)`` to RAS+ mm, the NIfTI world
convention, so that :func:`napari_patchdiff.io.write_nifti` output overlays the input).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..conventions import UNITS
from ..errors import InputError
from .files import check_memory

#: the largest accepted relative spread of the slice gaps, (max - min) / median
GAP_TOLERANCE = 0.01
_AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
_MODALITIES = {"CT": "ct", "MR": "mri"}


def read_dicom(p: Path, series: str | None = None) -> tuple[np.ndarray, dict]:
    """The image of a DICOM file or series directory ``p``, rescaled to float32, and its
    metadata (``modality``, ``units``, ``spacing``, ``orientation``, ``origin``, ``affine``,
    ``description``: the SeriesDescription, else None). ``series``: the SeriesInstanceUID to
    read from a directory holding several (see :func:`list_series`).

    The size of the decoded series is checked against the memory
    (:func:`~napari_patchdiff.io.files.check_memory`) before any pixel data is decoded.
    """
    datasets = _datasets(p, series)
    shapes = {(int(ds.Rows), int(ds.Columns), int(getattr(ds, "NumberOfFrames", 1) or 1))
              for ds in datasets}
    if len(shapes) > 1:
        raise InputError(f"DICOM slices in {p} have different sizes (rows, columns, frames): "
                         f"{sorted(shapes)}")
    rows, cols, frames = shapes.pop()
    check_memory(len(datasets) * rows * cols * frames * 4, f"the DICOM image {p.name}")
    datasets, geometry = _geometry(datasets, p)
    arrays = [_pixels(ds) for ds in datasets]
    array = arrays[0] if len(arrays) == 1 else np.stack(arrays)
    modality = _MODALITIES.get(str(getattr(datasets[0], "Modality", "")).strip().upper())
    meta = {"modality": modality, "units": UNITS.get(modality) if modality else None,
            "description": str(getattr(datasets[0], "SeriesDescription", "") or "") or None}
    meta.update(geometry)
    if array.ndim == 3 and len(datasets) == 1:  # a multi-frame file: no per-frame geometry
        meta["affine"] = None
        if meta["spacing"] is not None:
            meta["spacing"] = [_thickness(datasets[0]) or 1.0] + meta["spacing"][-2:]
    return array, meta


def list_series(p: Path) -> list[dict]:
    """The image series in directory ``p`` (headers only, no pixel data decoded), in
    SeriesNumber order: dicts with ``uid`` (SeriesInstanceUID), ``description``
    (SeriesDescription or None), ``number`` (SeriesNumber or None), ``modality`` and
    ``files`` (how many image files). InputError when the directory holds no DICOM image."""
    found: dict[str, dict] = {}
    for ds in _read_dir(Path(p), stop_before_pixels=True):
        uid = str(getattr(ds, "SeriesInstanceUID", ""))
        entry = found.setdefault(uid, {
            "uid": uid, "description": str(getattr(ds, "SeriesDescription", "") or "") or None,
            "number": _int_or_none(getattr(ds, "SeriesNumber", None)),
            "modality": _MODALITIES.get(str(getattr(ds, "Modality", "")).strip().upper()),
            "files": 0})
        entry["files"] += 1
    if not found:
        raise InputError(f"no DICOM images found in directory {p}")
    return sorted(found.values(), key=lambda e: (e["number"] is None, e["number"] or 0,
                                                 e["description"] or "", e["uid"]))


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _read_dir(p: Path, stop_before_pixels: bool = False) -> list:
    """The datasets holding an image among the files of directory ``p`` (other files skipped:
    a README, a thumbnail...)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    datasets = []
    for f in sorted(q for q in p.iterdir() if q.is_file()):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=stop_before_pixels)
        except InvalidDicomError:
            continue
        if "PixelData" in ds or (stop_before_pixels and "Rows" in ds):
            datasets.append(ds)
    return datasets


def _datasets(p: Path, series: str | None = None) -> list:
    """The image datasets of a DICOM file, or of every DICOM file in a directory (one series,
    or the one whose SeriesInstanceUID is ``series``)."""
    import pydicom

    if p.is_file():
        return [pydicom.dcmread(p)]
    datasets = _read_dir(p)
    if not datasets:
        raise InputError(f"no DICOM images found in directory {p}")
    if series is not None:
        datasets = [ds for ds in datasets if str(getattr(ds, "SeriesInstanceUID", "")) == series]
        if not datasets:
            raise InputError(f"directory {p} holds no DICOM series {series}")
    uids = {str(getattr(ds, "SeriesInstanceUID", "")) for ds in datasets}
    if len(uids) > 1:
        raise InputError(
            f"directory {p} holds {len(uids)} DICOM series; put one series per directory"
        )
    return datasets


def _geometry(datasets: list, p: Path) -> tuple[list, dict]:
    """The slices in spatial order and their geometry (see the module docstring)."""
    spacings = {tuple(round(float(v), 4) for v in ds.PixelSpacing)
                for ds in datasets if "PixelSpacing" in ds}
    if len(spacings) > 1:
        raise InputError(f"DICOM slices in {p} have different pixel spacings: {sorted(spacings)}")
    yx = [float(v) for v in datasets[0].PixelSpacing] if spacings else None
    geo = {"spacing": None, "orientation": None, "origin": None, "affine": None}
    if not all("ImagePositionPatient" in ds for ds in datasets):
        if len(datasets) > 1 and all("InstanceNumber" in ds for ds in datasets):
            datasets = sorted(datasets, key=lambda ds: int(ds.InstanceNumber))
        if yx is not None:
            geo["spacing"] = yx if len(datasets) == 1 else [_thickness(datasets[0]) or 1.0] + yx
        return datasets, geo
    cosines = _orientation(datasets, p)
    row, col = np.array(cosines[:3]), np.array(cosines[3:])
    normal = np.cross(row, col)
    if not np.linalg.norm(normal) > 0.5:
        raise InputError(f"DICOM {p}: ImageOrientationPatient {list(cosines)} is not two "
                         "perpendicular directions")
    normal /= np.linalg.norm(normal)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    order = np.argsort(positions @ normal, kind="stable")
    datasets, positions = [datasets[i] for i in order], positions[order]
    if len(datasets) > 1:
        z = _check_gaps(positions @ normal, datasets, p)
        step = (positions[-1] - positions[0]) / (len(datasets) - 1)  # exact even for a tilt
    else:
        z = _thickness(datasets[0]) or 1.0
        step = normal * z
    geo["orientation"] = [float(v) for v in cosines]
    geo["origin"] = [float(v) for v in positions[0]]
    if yx is not None:
        geo["spacing"] = yx if len(datasets) == 1 else [z] + yx
        lps = np.eye(4)
        lps[:3, 0], lps[:3, 1], lps[:3, 2] = step, col * yx[0], row * yx[1]
        lps[:3, 3] = positions[0]
        geo["affine"] = (np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps).tolist()  # LPS -> RAS
    return datasets, geo


def _orientation(datasets: list, p: Path) -> tuple:
    """The one ImageOrientationPatient of the slices (axial when absent); InputError if mixed."""
    if not all("ImageOrientationPatient" in ds for ds in datasets):
        return _AXIAL
    found = [tuple(float(v) for v in ds.ImageOrientationPatient) for ds in datasets]
    distinct = []
    for ori in found:
        if not any(np.allclose(ori, d, atol=1e-4) for d in distinct):
            distinct.append(ori)
    if len(distinct) > 1:
        shown = "; ".join(" ".join(f"{v:g}" for v in d) for d in distinct[:3])
        raise InputError(f"DICOM series {p} mixes {len(distinct)} slice orientations "
                         f"(ImageOrientationPatient {shown}); read one orientation at a time")
    return found[0]


def _check_gaps(depth: np.ndarray, datasets: list, p: Path) -> float:
    """The slice spacing: the median gap between the sorted ``depth`` values (mm along the
    normal). InputError for duplicated positions or gaps spread by more than GAP_TOLERANCE."""
    gaps = np.diff(depth)
    same = np.flatnonzero(gaps <= 1e-4 + 1e-3 * gaps.max())
    if same.size:
        pairs = ", ".join(f"{_name(datasets[i])} and {_name(datasets[i + 1])} at "
                          f"{depth[i]:g} mm" for i in same[:3])
        more = f" (and {same.size - 3} more)" if same.size > 3 else ""
        raise InputError(f"DICOM series {p}: {pairs}{more} are at the same position along the "
                         "slice normal (duplicated slices or several acquisitions in one "
                         "series); keep one slice per position")
    median = float(np.median(gaps))
    if (gaps.max() - gaps.min()) / median > GAP_TOLERANCE:
        odd = np.flatnonzero(np.abs(gaps - median) > GAP_TOLERANCE * median)
        where = ", ".join(f"{gaps[i]:.4g} mm after {depth[i]:.4g} mm ({_name(datasets[i])})"
                          for i in odd[:3])
        more = f" and {odd.size - 3} more" if odd.size > 3 else ""
        raise InputError(
            f"DICOM series {p} has uneven slice spacing (gaps from {gaps.min():.4g} to "
            f"{gaps.max():.4g} mm along the slice normal, median {median:.4g} mm, more than "
            f"{GAP_TOLERANCE:.0%} apart): gaps of {where}{more}; missing slices? read an "
            "evenly spaced run of slices"
        )
    return median


def _thickness(ds) -> float | None:
    """SpacingBetweenSlices, else SliceThickness, else None."""
    for key in ("SpacingBetweenSlices", "SliceThickness"):
        value = getattr(ds, key, None)
        if value:
            return float(value)
    return None


def _name(ds) -> str:
    """The file name of a dataset, for messages."""
    return Path(str(getattr(ds, "filename", "") or "?")).name


def _pixels(ds) -> np.ndarray:
    """The pixel array of one dataset, rescaled to float32 (HU for CT)."""
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    return ds.pixel_array.astype(np.float32) * np.float32(slope) + np.float32(intercept)
