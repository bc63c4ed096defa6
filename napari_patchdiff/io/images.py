"""TIFF and NumPy files, and the entry points over every format: :func:`read_image` (which
hands NIfTI to :mod:`~napari_patchdiff.io.nifti` and DICOM to :mod:`~napari_patchdiff.io.dicom`),
:func:`list_dicom_series`, :func:`write_tiff` and the measurements (:func:`write_measurement`,
:func:`read_measurement`). Used through :mod:`napari_patchdiff.io`, which re-exports them; the
metadata they fill is described there.
"""
from __future__ import annotations

import contextlib
import logging
import math
import re
import warnings
from pathlib import Path

import numpy as np
import tifffile

from ..errors import InputError, InputWarning
from .dicom import list_series, read_dicom
from .files import check_file_size, check_memory, one_line
from .modality import canonical_modality, is_real_numeric
from .nifti import read_nifti
from .sidecars import (DICOM_SUFFIXES, NIFTI_SUFFIXES, NPY_SUFFIXES, SUPPORTED, TIFF_SUFFIXES,
                       check_spacing, read_sidecar, valid_affine, write_with_sidecar)

__all__ = ["read_image", "list_dicom_series", "write_tiff", "write_measurement",
           "read_measurement"]


# --------------------------------------------------------------------------- public API


def read_image(path, *, series: str | None = None) -> tuple[np.ndarray, dict]:
    """Read a 2D image or 3D volume (slices first) and its metadata.

    ``series``: for a directory holding several DICOM series, the SeriesInstanceUID of the one
    to read (:func:`list_dicom_series` lists them).

    Integer data keep their dtype; floating data are returned as float32; DICOM data are
    rescaled (``RescaleSlope``, ``RescaleIntercept``) to float32. Singleton axes are squeezed.
    Raises :class:`InputError` for a missing, unreadable, truncated or unsupported file, an
    array that is not 2D/3D or would not fit in memory, a complex or non-numeric dtype, or
    NaN/inf values.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"file not found: {p}")
    kind = _kind(p)
    try:
        array, meta = read_dicom(p, series) if series is not None else _READERS[kind](p)
    except (InputError, MemoryError):
        raise
    except Exception as exc:  # library errors: corrupt files, unexpected layouts
        raise InputError(
            f"cannot read {p} as {kind.upper()}: {type(exc).__name__}: {one_line(exc)}"
        ) from exc
    meta = _standard_meta(meta, p)
    array, meta["spacing"], meta["affine"] = _squeeze(np.asarray(array), meta["spacing"],
                                                      meta["affine"])
    _check_array(array, p)
    if np.issubdtype(array.dtype, np.floating) and array.dtype != np.float32:
        array = array.astype(np.float32)
    check_spacing(meta["spacing"], array.ndim, p)
    return array, meta


def list_dicom_series(path) -> list[dict]:
    """The DICOM image series in a directory, from their headers alone: dicts with ``uid``
    (pass it to :func:`read_image` as ``series``), ``description``, ``number``, ``modality``
    and ``files``. InputError for a directory without DICOM images or with unreadable ones."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise InputError(f"not a directory: {p}")
    try:
        return list_series(p)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read the DICOM files in {p}: {type(exc).__name__}: "
                         f"{one_line(exc)}") from exc


def write_tiff(path, array, meta: dict | None = None) -> Path:
    """Write ``array`` as a float32 zlib TIFF and ``meta`` as a JSON sidecar ``<stem>.json``.

    The metadata is also stored in the TIFF description, so the TIFF alone is
    self-describing (``affine``, ``spacing`` and the rest read back unchanged). Parent folders
    are created. Both files are first written to temporary files in the target folder and then
    moved into place, so a failure leaves no partial file. Returns the TIFF path.
    """
    p = Path(path).expanduser()
    if p.suffix.lower() not in TIFF_SUFFIXES:
        raise InputError(f"write_tiff needs a .tif or .tiff path, got {p.name!r}")
    data = np.asarray(array)
    if np.iscomplexobj(data) or not is_real_numeric(data.dtype):
        raise InputError(f"cannot write an array of dtype {data.dtype} as a float32 TIFF")
    data = data.astype(np.float32, copy=False)
    return write_with_sidecar(p, meta, lambda tmp, safe: tifffile.imwrite(
        tmp, data, compression="zlib", photometric="minisblack", metadata=safe))


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
    return write_with_sidecar(p, meta, lambda tmp, safe: tifffile.imwrite(
        tmp, data, compression="zlib", photometric="minisblack"))


def read_measurement(path) -> tuple[np.ndarray, dict]:
    """Read a measurement (TIFF or ``.npy``, real or complex) and its sidecar.

    Unlike :func:`read_image`, complex data are kept (MRI k-space). Raises
    :class:`InputError` for a missing, unreadable or truncated file, data that would not fit
    in memory, or non-finite values.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"file not found: {p}")
    try:
        if p.suffix.lower() in TIFF_SUFFIXES:
            array = _load_tiff(p)[0]
        elif p.suffix.lower() in NPY_SUFFIXES:
            array = _load_npy(p)
        else:
            raise InputError(f"a measurement must be a .tif/.tiff or .npy file, got {p.name!r}")
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read measurement {p}: {type(exc).__name__}: "
                         f"{one_line(exc)}") from exc
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


# --------------------------------------------------------------------------- readers


def _read_tiff(p: Path) -> tuple[np.ndarray, dict]:
    """TIFF via tifffile; metadata from the TIFF description, then the sidecar."""
    array, shaped = _load_tiff(p)
    meta = dict(shaped[0]) if shaped else {}
    meta.pop("shape", None)
    meta.update(read_sidecar(p))
    return array, meta


def _read_npy(p: Path) -> tuple[np.ndarray, dict]:
    """NumPy ``.npy`` (no pickles); metadata from the sidecar."""
    return _load_npy(p), read_sidecar(p)


_READERS = {"tiff": _read_tiff, "npy": _read_npy, "nifti": read_nifti, "dicom": read_dicom}


def _load_npy(p: Path) -> np.ndarray:
    """A ``.npy`` array; its header is checked against the file size and the memory first."""
    with open(p, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        offset = fh.tell()
    if dtype.hasobject:
        raise InputError(f"{p.name} holds Python objects (dtype {dtype}), not numbers")
    nbytes = math.prod(shape) * dtype.itemsize
    check_file_size(p, offset + nbytes, shape, dtype)
    check_memory(nbytes, f"the array {p.name}")
    return np.load(p, allow_pickle=False)


@contextlib.contextmanager
def _tifffile_log():
    """What tifffile logs while a file is read, collected instead of printed (above the one-line
    error of a damaged file it would only confuse); the logger is left as it was."""
    logger = logging.getLogger("tifffile")
    said: list[str] = []

    def keep(record: logging.LogRecord) -> bool:
        said.append(re.sub(r"^<[^>]*>\s*", "", record.getMessage()))  # drop "<TiffFile 'x'>"
        return False

    logger.addFilter(keep)
    try:
        yield said
    finally:
        logger.removeFilter(keep)


def _load_tiff(p: Path):
    """A TIFF's array and shaped metadata; the declared shape is checked against the file size
    (uncompressed data) and the memory before reading. Several series, colour samples and an
    ImageJ file with fewer images than it declares are refused; what tifffile logs is kept off
    the terminal: dropped with an error, one :class:`InputWarning` after a read that worked."""
    with _tifffile_log() as said:
        array, shaped = _read_tiff_file(p)
    if said:
        text = "; ".join(dict.fromkeys(said))  # each message once
        warnings.warn(InputWarning(f"{p.name}: tifffile reported: {text[:240]}"), stacklevel=3)
    return array, shaped


def _read_tiff_file(p: Path):
    with tifffile.TiffFile(p) as tif:
        if len(tif.series) > 1:  # tif.asarray() would read the first and drop the others
            shapes = ", ".join(str(tuple(s.shape)) for s in tif.series[:3])
            more = ", ..." if len(tif.series) > 3 else ""
            raise InputError(f"{p.name} holds {len(tif.series)} image series (shapes "
                             f"{shapes}{more}); one file must hold one image or volume: save "
                             f"each series to a file of its own")
        if tif.series:
            series = tif.series[0]
            shape, dtype = tuple(series.shape), np.dtype(series.dtype)
            if series.axes.endswith("S"):  # samples last: it would read as rows of 3 pixels
                kind = {3: "RGB", 4: "RGBA"}.get(shape[-1], f"{shape[-1]} samples per pixel")
                raise InputError(f"{p.name} is a colour image ({kind}, shape {shape}); "
                                 f"reconstruction needs a grayscale image or volume: convert "
                                 f"it first (e.g. skimage.color.rgb2gray) or keep one channel")
            declared = (tif.imagej_metadata or {}).get("images") if tif.is_imagej else None
            planes = math.prod(shape[:-2]) if len(shape) > 2 else 1
            if isinstance(declared, int) and planes < declared:
                raise InputError(f"{p.name} is truncated or corrupt: its ImageJ header "
                                 f"declares {declared} images but only {planes} can be read")
            nbytes = math.prod(shape) * dtype.itemsize
            if series.keyframe.compression == 1:  # uncompressed: the bytes must be there
                check_file_size(p, nbytes, shape, dtype)
            check_memory(nbytes, f"the image {p.name}")
        return tif.asarray(), tif.shaped_metadata


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


def _standard_meta(meta: dict, p: Path) -> dict:
    """Fill the standard keys; spacing a tuple of floats, affine checked, modality normalised."""
    out = dict(meta)
    out["modality"] = canonical_modality(out.get("modality"))
    out.setdefault("units", None)
    spacing = out.get("spacing")
    try:
        out["spacing"] = None if spacing is None else tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise InputError(f"{p.name}: spacing {spacing!r} must be a list of numbers") from None
    out["affine"] = None if out.get("affine") is None else valid_affine(out["affine"], p)
    out["source"] = str(p)
    return out


def _squeeze(array: np.ndarray, spacing, affine):
    """Drop singleton axes (and their spacing, when spacing has one value per axis). A volume
    becoming an image keeps an affine for ``(1, rows, cols)``: the dropped axis goes first."""
    keep = [i for i, n in enumerate(array.shape) if n != 1]
    if len(keep) == array.ndim:
        return array, spacing, affine
    if spacing is not None and len(spacing) == array.ndim:
        spacing = tuple(spacing[i] for i in keep)
    if affine is not None and array.ndim == 3 and len(keep) == 2:
        order = [i for i in range(3) if i not in keep] + keep + [3]
        affine = np.array(affine)[:, order].tolist()
    return array.reshape([array.shape[i] for i in keep]), spacing, affine


def _check_array(array: np.ndarray, p: Path) -> None:
    """InputError unless ``array`` is a finite real 2D or 3D array."""
    if np.iscomplexobj(array):
        raise InputError(
            f"{p.name}: complex data ({array.dtype}) is not supported; "
            "take the magnitude (np.abs) first"
        )
    if not is_real_numeric(array.dtype):
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
