"""JSON sidecars and the geometry metadata they carry.

An image file ``scan.tif`` (or ``a.nii.gz``, ...) may have a sidecar ``scan.json`` beside it
holding its metadata (:func:`sidecar_path`, :func:`read_sidecar`); the writers store data and
sidecar together, atomically (:func:`write_with_sidecar`), as JSON-safe values
(:func:`json_safe`). The geometry keys read from a sidecar or a header are checked here for
every reader: ``affine`` a finite, invertible 4x4 matrix (:func:`valid_affine`), ``spacing`` one
positive value per axis (:func:`check_spacing`).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from .files import atomic_output

__all__ = [
    "DICOM_SUFFIXES",
    "NIFTI_SUFFIXES",
    "NPY_SUFFIXES",
    "SUPPORTED",
    "TIFF_SUFFIXES",
    "check_spacing",
    "image_stem",
    "is_singular",
    "json_safe",
    "read_sidecar",
    "sidecar_path",
    "valid_affine",
    "write_with_sidecar",
]

TIFF_SUFFIXES = (".tif", ".tiff")
NPY_SUFFIXES = (".npy",)
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom")
SUPPORTED = TIFF_SUFFIXES + NPY_SUFFIXES + NIFTI_SUFFIXES + DICOM_SUFFIXES


def image_stem(p: Path) -> str:
    """The file name without its (possibly double, like ``.nii.gz``) image suffix."""
    name = p.name
    for suffix in sorted(SUPPORTED, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return p.stem


def sidecar_path(path) -> Path:
    """The sidecar of an image file: ``scan.tif`` -> ``scan.json``, ``a.nii.gz`` -> ``a.json``."""
    p = Path(path)
    if p.suffix.lower() == ".json":
        return p
    return p.with_name(image_stem(p) + ".json")


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


def write_with_sidecar(p: Path, meta, write) -> Path:
    """``write(tmp, json_safe_meta)`` the data and write ``meta`` as the JSON sidecar, both
    through temporary files in the target folder moved into place (data first), so a failure
    leaves no partial file; both get the umask's permissions. Returns ``p``."""
    safe = json_safe(dict(meta or {}))
    with atomic_output(sidecar_path(p)) as tmp_json, atomic_output(p) as tmp_data:
        write(tmp_data, safe)
        tmp_json.write_text(json.dumps(safe, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return p


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


def is_singular(affine) -> bool:
    """Whether the 4x4 ``affine``'s linear part cannot be inverted (an all-zero matrix, a zero
    column, two parallel ones): it maps the voxels onto a plane, a line or a point."""
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    if not np.isfinite(linear).all():
        return True
    s = np.linalg.svd(linear, compute_uv=False)
    return not s[0] > 0 or s[-1] <= 1e-9 * s[0]


def valid_affine(value, p: Path) -> list:
    """``value`` as a 4x4 list of floats; InputError (naming the file ``p``) unless it is one,
    finite and invertible."""
    try:
        affine = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        affine = np.zeros(0)
    text = json.dumps(json_safe(value))[:80]
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise InputError(f"{p.name}: the affine {text} must be a 4x4 matrix of finite numbers")
    if is_singular(affine):
        raise InputError(f"{p.name}: the affine {text} is singular (it maps the voxels onto a "
                         "plane, a line or a point, not into space); fix or drop it")
    return affine.tolist()


def check_spacing(spacing, ndim: int, p: Path) -> None:
    """InputError (naming the file ``p``) if ``spacing`` does not give one positive value per
    axis; ``None`` (unknown) passes."""
    if spacing is None:
        return
    if len(spacing) != ndim:
        raise InputError(
            f"{p.name}: spacing {spacing} has {len(spacing)} values but the data are {ndim}D"
        )
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"{p.name}: spacing {spacing} must be positive and finite")
