"""Intensity conventions: every solver and prior works on a normalised [0, 1] scale.

CT (Hounsfield units)
    ``x = clip((HU + 1024) / 2048, 0, 1)``: air (-1024 HU) is 0, water (0 HU) is 0.5, dense bone
    (+1024 HU) is 1. The map is affine in attenuation and zero for air, so CT physics stays linear
    on this scale. Values above +1024 HU (metal, the densest cortical bone) are clipped.
    Inverse: ``HU = 2048 x - 1024``.

MRI (magnitude, scanner units)
    ``x = clip(m / s, 0, 1)`` with ``s`` the 99.5th percentile of the magnitude over the whole
    volume (so a few bright vessels do not set the scale). ``s`` is recorded in sidecars and
    reports; the inverse is ``m = s x``.
"""
from __future__ import annotations

import numpy as np

HU_AIR = -1024.0
HU_RANGE = 2048.0
MRI_PERCENTILE = 99.5
MODALITIES = ("ct", "mri", "unit")
#: the units of each modality's images, for sidecars, reports and layer metadata
UNITS = {"ct": "HU", "mri": "scanner units", "unit": "normalised [0, 1]"}


def units_of(modality: str | None, meta: dict | None = None) -> str:
    """The units of an image: ``meta["units"]`` when set, else those of its modality."""
    given = (meta or {}).get("units")
    return given or UNITS.get(modality or "unit", UNITS["unit"])


def hu_to_unit(hu):
    """Map Hounsfield units to the normalised attenuation scale [0, 1] (clipped)."""
    return np.clip((np.asarray(hu, dtype=np.float32) - HU_AIR) / HU_RANGE, 0.0, 1.0)


def unit_to_hu(x):
    """Map the normalised scale back to Hounsfield units."""
    return np.asarray(x, dtype=np.float32) * HU_RANGE + HU_AIR


def mri_scale(magnitude) -> float:
    """The MRI normalisation constant: the 99.5th percentile of the magnitude volume."""
    m = np.abs(np.asarray(magnitude, dtype=np.float64))
    s = float(np.percentile(m, MRI_PERCENTILE))
    if not np.isfinite(s) or s <= 0:
        raise ValueError("cannot normalise an MRI volume whose 99.5th percentile is not positive")
    return s


def normalise(volume, modality: str, scale: float | None = None):
    """Map ``volume`` in its own units to [0, 1]; returns ``(x, scale)``.

    ``modality`` is "ct" (HU), "mri" (magnitude; ``scale`` defaults to :func:`mri_scale`) or
    "unit" (already normalised; values are only checked).
    """
    if modality == "ct":
        return hu_to_unit(volume), None
    if modality == "mri":
        scale = mri_scale(volume) if scale is None else float(scale)
        return np.clip(np.abs(np.asarray(volume, dtype=np.float32)) / scale, 0.0, 1.0), scale
    if modality == "unit":
        return np.asarray(volume, dtype=np.float32), None
    raise ValueError(f"unknown modality {modality!r}; choose one of {MODALITIES}")


def denormalise(x, modality: str, scale: float | None = None):
    """Inverse of :func:`normalise` (up to clipping)."""
    if modality == "ct":
        return unit_to_hu(x)
    if modality == "mri":
        return np.asarray(x, dtype=np.float32) * float(scale)
    if modality == "unit":
        return np.asarray(x, dtype=np.float32)
    raise ValueError(f"unknown modality {modality!r}; choose one of {MODALITIES}")
