"""The curated sample volumes shipped in ``napari_patchdiff.sample_data``.

``load_sample("ct")``: chest CT, 16 x 256 x 256 int16 HU (lung2 slices 45-60, held out from
training). ``load_sample("mri")``: brain MRI, 23 x 256 x 256 int16 scanner units (brain2, the
MRI test split). Both are "pyradiomics test data" (BSD-3-Clause). ``load_sample("mni")``: the
MNI ICBM152 2009a T1 template, 189 x 233 x 197 at 1 mm isotropic (the isotropic development
volume of true 3D; its licence asks for its copyright notice, kept in its JSON). See the
README.md there.

``ct_sample``, ``mri_sample`` and ``mni_sample`` are the napari sample-data commands (File > Open
Sample). This module imports neither napari nor Qt.
"""
from __future__ import annotations

import json
from importlib.resources import files

import numpy as np
import tifffile

from ..conventions import mri_scale
from ..errors import InputError

SAMPLES = ("ct", "mri", "mni")
_STEMS = {"ct": "ct_lung", "mri": "mri_brain", "mni": "mri_mni152"}
_LAYER_NAMES = {"ct": "CT lung (HU)", "mri": "MRI brain", "mni": "MNI152 T1 template (1 mm)"}
CT_CONTRAST_LIMITS = (-1000.0, 600.0)


def load_sample(name: str) -> tuple[np.ndarray, dict]:
    """Load a sample volume as stored (int16) and its metadata from the JSON beside it.

    ``name`` is one of :data:`SAMPLES`. The metadata has ``modality``, ``units``,
    ``spacing`` (z, y, x in mm, a tuple), ``source``, ``slices`` (original slice indices),
    ``attribution`` and ``licence``; ``sample`` is added with ``name``.
    """
    key = str(name).strip().lower()
    if key not in _STEMS:
        raise InputError(f"unknown sample {name!r}; choose one of {', '.join(SAMPLES)}")
    root = files("napari_patchdiff.sample_data")
    stem = _STEMS[key]
    with (root / f"{stem}.tif").open("rb") as fh:
        data = tifffile.imread(fh)
    meta = json.loads((root / f"{stem}.json").read_text(encoding="utf-8"))
    meta["spacing"] = tuple(float(s) for s in meta["spacing"])
    meta["sample"] = key
    return data, meta


def _layer(name: str) -> list[tuple]:
    """A napari LayerDataTuple list for sample ``name``."""
    data, meta = load_sample(name)
    if name == "ct":
        limits = CT_CONTRAST_LIMITS
    else:
        limits = (0.0, mri_scale(data))
    kwargs = {
        "name": _LAYER_NAMES[name],
        "scale": meta["spacing"],
        "metadata": meta,
        "colormap": "gray",
        "contrast_limits": limits,
    }
    return [(data, kwargs, "image")]


def ct_sample() -> list[tuple]:
    """napari sample: the chest CT volume in HU, window -1000..600 HU."""
    return _layer("ct")


def mri_sample() -> list[tuple]:
    """napari sample: the brain MRI volume, window 0..99.5th percentile."""
    return _layer("mri")


def mni_sample() -> list[tuple]:
    """napari sample: the MNI152 T1 template, 1 mm isotropic, window 0..99.5th percentile."""
    return _layer("mni")
