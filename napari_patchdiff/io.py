"""Reading and writing images and volumes, with their metadata.

Arrays are 2D ``(rows, cols)`` or 3D ``(slices, rows, cols)``. Metadata is a plain dict; the
keys every reader fills (``None`` where unknown) are

``modality``  ``"ct"``, ``"mri"``, ``"unit"`` (already on [0, 1]) or ``None``
``units``     ``"HU"`` for CT, ``"scanner units"`` for MRI, ...
``spacing``   voxel size in mm as a tuple, ``(z, y, x)`` for volumes or ``(y, x)`` for images
``source``    the path read

Formats: TIFF (``.tif``, ``.tiff``; a JSON sidecar ``<stem>.json`` beside it is merged in),
NumPy (``.npy``; sidecar merged too), NIfTI (``.nii``, ``.nii.gz``) and DICOM (a ``.dcm`` file
or a directory holding one series). Every bad input raises
:class:`~napari_patchdiff.errors.InputError` with a message meant for the user.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import tifffile

from .conventions import UNITS
from .errors import InputError

TIFF_SUFFIXES = (".tif", ".tiff")
NPY_SUFFIXES = (".npy",)
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom")
SUPPORTED = TIFF_SUFFIXES + NPY_SUFFIXES + NIFTI_SUFFIXES + DICOM_SUFFIXES
_MODALITY_ALIASES = {"ct": "ct", "mr": "mri", "mri": "mri", "unit": "unit"}
_NIFTI_TO_MM = {"mm": 1.0, "meter": 1000.0, "micron": 0.001}


# --------------------------------------------------------------------------- public API


def read_image(path) -> tuple[np.ndarray, dict]:
    """Read a 2D image or 3D volume (slices first) and its metadata.

    Integer data keep their dtype; floating data are returned as float32; DICOM data are
    rescaled (``RescaleSlope``, ``RescaleIntercept``) to float32. Singleton axes are squeezed.
    Raises :class:`InputError` for a missing, unreadable or unsupported file, an array that is
    not 2D/3D, a complex or non-numeric dtype, or NaN/inf values.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"file not found: {p}")
    kind = _kind(p)
    try:
        array, meta = _READERS[kind](p)
    except (InputError, MemoryError):
        raise
    except Exception as exc:  # library errors: corrupt files, unexpected layouts
        raise InputError(
            f"cannot read {p} as {kind.upper()}: {type(exc).__name__}: {exc}"
        ) from exc
    meta = _standard_meta(meta, p)
    array, meta["spacing"] = _squeeze(np.asarray(array), meta["spacing"])
    _check_array(array, p)
    if np.issubdtype(array.dtype, np.floating) and array.dtype != np.float32:
        array = array.astype(np.float32)
    _check_spacing(meta["spacing"], array.ndim, p)
    return array, meta


def write_tiff(path, array, meta: dict | None = None) -> Path:
    """Write ``array`` as a float32 zlib TIFF and ``meta`` as a JSON sidecar ``<stem>.json``.

    The metadata is also stored in the TIFF description, so the TIFF alone is
    self-describing. Parent folders are created. Both files are first written to temporary
    files in the target folder and then moved into place, so a failure leaves no partial file.
    Returns the TIFF path.
    """
    p = Path(path).expanduser()
    if p.suffix.lower() not in TIFF_SUFFIXES:
        raise InputError(f"write_tiff needs a .tif or .tiff path, got {p.name!r}")
    data = np.asarray(array)
    if np.iscomplexobj(data) or not _is_real_numeric(data.dtype):
        raise InputError(f"cannot write an array of dtype {data.dtype} as a float32 TIFF")
    return _write_tiff_and_sidecar(p, data.astype(np.float32, copy=False), meta, in_tiff=True)


def _write_tiff_and_sidecar(p: Path, data: np.ndarray, meta, in_tiff: bool) -> Path:
    """Write ``data`` (zlib TIFF) and ``meta`` (JSON sidecar) through temporary files in the
    target folder moved into place, so a failure leaves no partial file. With ``in_tiff`` the
    metadata also goes into the TIFF description."""
    safe = json_safe(dict(meta or {}))
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp_tif, tmp_json = _temp_path(p.parent, ".tif"), _temp_path(p.parent, ".json")
    extra = {"metadata": safe} if in_tiff else {}
    try:
        tifffile.imwrite(tmp_tif, data, compression="zlib", photometric="minisblack", **extra)
        tmp_json.write_text(json.dumps(safe, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp_tif, p)
        os.replace(tmp_json, sidecar_path(p))
    finally:
        for tmp in (tmp_tif, tmp_json):
            tmp.unlink(missing_ok=True)
    return p


def write_measurement(path, array, meta: dict | None = None) -> Path:
    """Write a measurement (sinogram, k-space: real float32 or complex64) as TIFF + sidecar.

    The sidecar should name the operator, its parameters and the image shape, so that
    :func:`read_measurement` and ``napari-patchdiff reconstruct --measurement`` can use it alone.
    """
    p = Path(path).expanduser()
    if p.suffix.lower() not in TIFF_SUFFIXES:
        raise InputError(f"write_measurement needs a .tif or .tiff path, got {p.name!r}")
    data = np.asarray(array)
    data = data.astype(np.complex64 if np.iscomplexobj(data) else np.float32, copy=False)
    return _write_tiff_and_sidecar(p, data, meta, in_tiff=False)


def read_measurement(path) -> tuple[np.ndarray, dict]:
    """Read a measurement (TIFF or ``.npy``, real or complex) and its sidecar.

    Unlike :func:`read_image`, complex data are kept (MRI k-space). Raises
    :class:`InputError` for a missing or unreadable file or non-finite values.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"file not found: {p}")
    try:
        if p.suffix.lower() in TIFF_SUFFIXES:
            array = tifffile.imread(p)
        elif p.suffix.lower() in NPY_SUFFIXES:
            array = np.load(p, allow_pickle=False)
        else:
            raise InputError(f"a measurement must be a .tif/.tiff or .npy file, got {p.name!r}")
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read measurement {p}: {type(exc).__name__}: {exc}") from exc
    if not (np.issubdtype(array.dtype, np.number)):
        raise InputError(f"measurement {p} has non-numeric dtype {array.dtype}")
    bad = int((~np.isfinite(array)).sum())
    if bad:
        raise InputError(f"measurement {p} contains {bad} NaN or infinite values")
    if np.iscomplexobj(array):
        array = array.astype(np.complex64)
    else:
        array = array.astype(np.float32)
    return array, read_sidecar(p)


def read_sidecar(path) -> dict:
    """The JSON sidecar of an image file (``<stem>.json`` beside it) as a dict.

    ``path`` is the image path (or the ``.json`` path itself). Returns ``{}`` when there is no
    sidecar; raises :class:`InputError` when it is not valid JSON or not a JSON object.
    """
    side = sidecar_path(path)
    if not side.is_file():
        return {}
    try:
        value = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"corrupt JSON sidecar {side}: {exc}") from exc
    if not isinstance(value, dict):
        raise InputError(f"JSON sidecar {side} must hold an object, not {type(value).__name__}")
    return value


def sidecar_path(path) -> Path:
    """The sidecar of an image file: ``scan.tif`` -> ``scan.json``, ``a.nii.gz`` -> ``a.json``."""
    p = Path(path)
    if p.suffix.lower() == ".json":
        return p
    return p.with_name(_stem(p) + ".json")


def guess_modality(array, meta: dict | None = None) -> str:
    """Guess the intensity convention of ``array``: ``"ct"``, ``"mri"`` or ``"unit"``.

    Metadata wins: ``"ct"`` if ``meta["modality"]`` says CT or ``meta["units"]`` is HU,
    ``"mri"`` if the modality says MR/MRI, ``"unit"`` if it says unit. Otherwise the values
    decide: ``"ct"`` if the minimum is below -200 (air in HU), ``"unit"`` if every value lies in
    [0, 1], else ``"mri"`` (non-negative magnitudes in scanner units). NaNs are ignored.
    """
    meta = meta or {}
    modality = _modality(meta.get("modality"))
    if modality == "ct" or str(meta.get("units") or "").strip().lower() == "hu":
        return "ct"
    if modality in ("mri", "unit"):
        return modality
    a = np.asarray(array, dtype=np.float64)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if lo < -200:
        return "ct"
    if lo >= 0 and hi <= 1:
        return "unit"
    return "mri"


def json_safe(value):
    """A JSON-serialisable copy of ``value``: numpy scalars/arrays, tuples, paths converted.

    Non-finite floats become ``None``; unknown objects become their ``str``.
    """
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


# --------------------------------------------------------------------------- readers


def _read_tiff(p: Path) -> tuple[np.ndarray, dict]:
    """TIFF via tifffile; metadata from the TIFF description, then the sidecar."""
    with tifffile.TiffFile(p) as tif:
        array = tif.asarray()
        shaped = tif.shaped_metadata
    meta = dict(shaped[0]) if shaped else {}
    meta.pop("shape", None)
    meta.update(read_sidecar(p))
    return array, meta


def _read_npy(p: Path) -> tuple[np.ndarray, dict]:
    """NumPy ``.npy`` (no pickles); metadata from the sidecar."""
    array = np.load(p, allow_pickle=False)
    return array, read_sidecar(p)


def _read_nifti(p: Path) -> tuple[np.ndarray, dict]:
    """NIfTI via nibabel; nibabel's last axis goes first, spacing from the zooms (in mm)."""
    import nibabel

    img = nibabel.load(p)
    array = np.asanyarray(img.dataobj)
    zooms = [float(z) for z in img.header.get_zooms()[: array.ndim]]
    space_unit = img.header.get_xyzt_units()[0]
    zooms = [z * _NIFTI_TO_MM.get(space_unit, 1.0) for z in zooms]
    keep = [i for i, n in enumerate(array.shape) if n != 1]
    if len(keep) < array.ndim:
        array = array.reshape([array.shape[i] for i in keep])
        zooms = [zooms[i] for i in keep]
    if array.ndim == 3:
        array = np.moveaxis(array, -1, 0)
        zooms = zooms[-1:] + zooms[:-1]
    return array, {"spacing": zooms}


def _read_dicom(p: Path) -> tuple[np.ndarray, dict]:
    """DICOM: one file or a directory holding one series, rescaled to float32."""
    datasets = _dicom_datasets(p)
    datasets = _sort_slices(datasets)
    arrays = [_dicom_pixels(ds) for ds in datasets]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise InputError(f"DICOM slices in {p} have different shapes: {sorted(shapes)}")
    array = arrays[0] if len(arrays) == 1 else np.stack(arrays)
    first = datasets[0]
    modality = _modality(getattr(first, "Modality", None))
    units = UNITS.get(modality) if modality in ("ct", "mri") else None
    spacing = _dicom_spacing(datasets, array.ndim)
    return array, {"modality": modality, "units": units, "spacing": spacing}


_READERS = {"tiff": _read_tiff, "npy": _read_npy, "nifti": _read_nifti, "dicom": _read_dicom}


# --------------------------------------------------------------------------- DICOM helpers


def _dicom_datasets(p: Path) -> list:
    """The image datasets of a DICOM file, or of every DICOM file in a directory (one series)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if p.is_file():
        return [pydicom.dcmread(p)]
    datasets = []
    for f in sorted(q for q in p.iterdir() if q.is_file()):
        try:
            ds = pydicom.dcmread(f)
        except InvalidDicomError:
            continue  # not a DICOM file (a README, a thumbnail...)
        if "PixelData" in ds:
            datasets.append(ds)
    if not datasets:
        raise InputError(f"no DICOM images found in directory {p}")
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for ds in datasets}
    if len(series) > 1:
        raise InputError(
            f"directory {p} holds {len(series)} DICOM series; put one series per directory"
        )
    return datasets


def _sort_slices(datasets: list) -> list:
    """Slices ordered by ``ImagePositionPatient[2]`` if all have it, else ``InstanceNumber``."""
    if len(datasets) < 2:
        return datasets
    if all("ImagePositionPatient" in ds for ds in datasets):
        return sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))
    if all("InstanceNumber" in ds for ds in datasets):
        return sorted(datasets, key=lambda ds: int(ds.InstanceNumber))
    return datasets


def _dicom_pixels(ds) -> np.ndarray:
    """The pixel array of one dataset, rescaled to float32 (HU for CT)."""
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    return (ds.pixel_array.astype(np.float32) * np.float32(slope) + np.float32(intercept))


def _dicom_spacing(datasets: list, ndim: int):
    """(z, y, x) or (y, x) in mm from PixelSpacing and slice positions (or SliceThickness)."""
    first = datasets[0]
    if "PixelSpacing" not in first:
        return None
    yx = [float(v) for v in first.PixelSpacing]
    if ndim == 2:
        return yx
    z = None
    if len(datasets) > 1 and all("ImagePositionPatient" in ds for ds in datasets):
        zs = np.array([float(ds.ImagePositionPatient[2]) for ds in datasets])
        steps = np.abs(np.diff(zs))
        z = float(np.median(steps)) if np.all(steps > 0) else None
    for key in ("SpacingBetweenSlices", "SliceThickness"):
        if z is None and getattr(first, key, None):
            z = float(getattr(first, key))
    return [z if z is not None else 1.0] + yx


# --------------------------------------------------------------------------- checks


def _kind(p: Path) -> str:
    """The reader for ``p``: "tiff", "npy", "nifti" or "dicom"; InputError if unsupported."""
    if p.is_dir():
        return "dicom"
    name = p.name.lower()
    for kind, suffixes in (
        ("tiff", TIFF_SUFFIXES),
        ("npy", NPY_SUFFIXES),
        ("nifti", NIFTI_SUFFIXES),
        ("dicom", DICOM_SUFFIXES),
    ):
        if name.endswith(suffixes):
            return kind
    raise InputError(
        f"unsupported file type {p.name!r}; supported: {', '.join(SUPPORTED)} "
        "or a directory of DICOM files"
    )


def _stem(p: Path) -> str:
    """The file name without its (possibly double, like ``.nii.gz``) image suffix."""
    name = p.name
    for suffix in sorted(SUPPORTED, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return p.stem


def _modality(value) -> str | None:
    """Normalise a modality string ("CT", "MR", "mri", ...) to "ct", "mri", "unit" or None."""
    if value is None:
        return None
    return _MODALITY_ALIASES.get(str(value).strip().lower())


def _standard_meta(meta: dict, p: Path) -> dict:
    """Fill the standard keys; spacing as a tuple of floats, modality normalised."""
    out = dict(meta)
    out["modality"] = _modality(out.get("modality"))
    out.setdefault("units", None)
    spacing = out.get("spacing")
    out["spacing"] = None if spacing is None else tuple(float(s) for s in spacing)
    out["source"] = str(p)
    return out


def _squeeze(array: np.ndarray, spacing):
    """Drop singleton axes (and their spacing, when spacing has one value per axis)."""
    keep = [i for i, n in enumerate(array.shape) if n != 1]
    if len(keep) == array.ndim:
        return array, spacing
    if spacing is not None and len(spacing) == array.ndim:
        spacing = tuple(spacing[i] for i in keep)
    return array.reshape([array.shape[i] for i in keep]), spacing


def _is_real_numeric(dtype) -> bool:
    """True for integer and floating dtypes (not bool, complex, strings, objects)."""
    return np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)


def _check_array(array: np.ndarray, p: Path) -> None:
    """InputError unless ``array`` is a finite real 2D or 3D array."""
    if np.iscomplexobj(array):
        raise InputError(
            f"{p.name}: complex data ({array.dtype}) is not supported; "
            "take the magnitude (np.abs) first"
        )
    if not _is_real_numeric(array.dtype):
        raise InputError(f"{p.name}: non-numeric data of dtype {array.dtype} is not supported")
    if array.ndim not in (2, 3):
        raise InputError(
            f"{p.name}: expected a 2D image or 3D volume (slices, rows, cols), got "
            f"{array.ndim}D data of shape {array.shape} (after dropping singleton axes)"
        )
    if np.issubdtype(array.dtype, np.floating):
        n_nan = int(np.isnan(array).sum())
        n_inf = int(np.isinf(array).sum())
        if n_nan or n_inf:
            raise InputError(
                f"{p.name}: data contains {n_nan} NaN and {n_inf} infinite values "
                f"(of {array.size}); replace them (e.g. np.nan_to_num) first"
            )


def _check_spacing(spacing, ndim: int, p: Path) -> None:
    """InputError if ``spacing`` does not give one positive value per axis."""
    if spacing is None:
        return
    if len(spacing) != ndim:
        raise InputError(
            f"{p.name}: spacing {spacing} has {len(spacing)} values but the data are {ndim}D"
        )
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"{p.name}: spacing {spacing} must be positive and finite")


def _temp_path(folder: Path, suffix: str) -> Path:
    """A new empty temporary file in ``folder`` (same file system, so os.replace is atomic)."""
    fd, name = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    os.close(fd)
    return Path(name)
