"""Training data: files, arrays and layers turned into normalised training volumes, one way.

:func:`training_volumes` is the one place where training inputs are read (file paths through
:func:`napari_patchdiff.io.read_image`), binned
(:func:`napari_patchdiff.training.resample.bin_blocks`), given a modality
(:func:`napari_patchdiff.io.guess_modality` unless one is given) and normalised
(:func:`napari_patchdiff.conventions.normalise`); the CLI, the GUI and
:func:`~napari_patchdiff.training.train` all go through it. :func:`load_training_slices` is the
development split of DATA.md (``"ct"`` / ``"mri"``), :func:`split_slices` the deterministic
validation split.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import io
from ..conventions import MODALITIES, hu_to_unit, normalise
from ..errors import InputError
from .resample import bin_blocks

__all__ = ["TrainingVolume", "training_volumes", "load_training_slices", "split_slices",
           "DATA_DIR", "SPLITS"]

#: the development data (``shared/data`` beside the repository), overridable by the environment
DATA_DIR = Path(os.environ.get("NAPARI_PATCHDIFF_DATA",
                              Path(__file__).resolve().parents[3] / "shared" / "data"))
#: the named training sets (:func:`load_training_slices`) and the modality of each
SPLITS = {"ct": "ct", "mri": "mri", "phantoms": "ct", "textured-phantoms": "ct"}
#: how many synthetic images the "phantoms" set holds (seed 0; see training/phantoms.py)
PHANTOM_COUNT = 400
#: how many the "textured-phantoms" set holds (seed 0; 3 in 4 textured bodies)
TEXTURED_COUNT = 4000


@dataclass
class TrainingVolume:
    """Training slices on the normalised scale: ``data`` (D, H, W) float32, the source ``name``,
    the original slice indices ``slices`` and the intensity ``scale`` (MRI) if any."""

    data: np.ndarray
    name: str
    slices: list[int] = field(default_factory=list)
    scale: float | None = None

    def __post_init__(self):
        self.data = np.asarray(self.data, dtype=np.float32)
        if self.data.ndim == 2:
            self.data = self.data[None]
        if self.data.ndim != 3:
            raise InputError(f"training volume {self.name!r} must be (D, H, W), "
                             f"got shape {self.data.shape}")
        if not self.slices:
            self.slices = list(range(self.data.shape[0]))
        self.slices = [int(s) for s in self.slices]
        if len(self.slices) != self.data.shape[0]:
            raise InputError(f"training volume {self.name!r}: {len(self.slices)} slice indices "
                             f"for {self.data.shape[0]} slices")


def _read_tif(path: Path) -> np.ndarray:
    import tifffile

    if not path.is_file():
        raise InputError(f"training data not found: {path} (set NAPARI_PATCHDIFF_DATA or "
                         "pass data_dir)")
    try:
        return np.asarray(tifffile.imread(str(path)))
    except Exception as exc:
        raise InputError(f"cannot read {path}: {exc}") from None


def load_training_slices(spec: str = "ct", data_dir=None) -> list[TrainingVolume]:
    """The training split of DATA.md, normalised to [0, 1] at 256 x 256.

    ``"ct"``: lung1.tif (all 48 slices) and lung2.tif slices 0-44; each 512 x 512 slice is averaged
    over 2 x 2 blocks in HU (:func:`~napari_patchdiff.training.resample.bin_blocks`), then mapped by
    :func:`~napari_patchdiff.conventions.hu_to_unit`.
    ``"mri"``: brain1.tif (all 25 slices) normalised by its 99.5th percentile
    (:func:`~napari_patchdiff.conventions.normalise`). ``data_dir`` defaults to
    ``$NAPARI_PATCHDIFF_DATA`` or ``shared/data`` beside the repository.
    ``"phantoms"``: :data:`PHANTOM_COUNT` synthetic 256 x 256 images on the CT normalised scale
    (:func:`napari_patchdiff.training.phantoms.phantom_slices`, seed 0): no data needed.
    ``"textured-phantoms"``: :data:`TEXTURED_COUNT` synthetic images, three in four of them
    textured bodies with lungs, vessels and bone rims (``phantom_slices(..., textured=True)``,
    seed 0; about 4 minutes to generate).
    """
    from .phantoms import phantom_slices

    if spec == "phantoms":
        return [TrainingVolume(phantom_slices(PHANTOM_COUNT, seed=0), "phantoms (seed 0)")]
    if spec == "textured-phantoms":
        return [TrainingVolume(phantom_slices(TEXTURED_COUNT, seed=0, textured=True),
                               f"textured phantoms ({TEXTURED_COUNT}, seed 0)")]
    root = Path(data_dir) if data_dir is not None else DATA_DIR
    if spec == "ct":
        out = []
        for fname, sl in (("lung1.tif", None), ("lung2.tif", range(0, 45))):
            vol = _read_tif(root / fname).astype(np.float32)
            idx = list(range(vol.shape[0])) if sl is None else list(sl)
            vol = vol[idx]
            if vol.shape[-1] == 512:
                vol = bin_blocks(vol, 2)
            out.append(TrainingVolume(hu_to_unit(vol), fname, idx))
        return out
    if spec == "mri":
        vol = _read_tif(root / "brain1.tif")
        x, scale = normalise(vol, "mri")
        return [TrainingVolume(x, "brain1.tif", list(range(x.shape[0])), scale)]
    raise InputError(f"unknown training data spec {spec!r}; choose one of {', '.join(SPLITS)}")


def training_volumes(items, modality: str | None = None,
                     bin: int = 1) -> tuple[list[TrainingVolume], str]:
    """Normalised training volumes and their modality from ``items`` (one item or a list):

    - ``"ct"`` / ``"mri"``: the development training split, ``"phantoms"`` and
      ``"textured-phantoms"``: synthetic CT-like images (:func:`load_training_slices`);
    - a file path (TIFF, NumPy, NIfTI, DICOM; :func:`napari_patchdiff.io.read_image`);
    - an array (D, H, W) or (H, W) in its own units (HU for CT, magnitude for MRI);
    - a tuple ``(name, array)``, ``(name, array, metadata dict)`` (an image layer: the metadata
      helps guess the modality) or ``(name, array, slice indices)``;
    - a :class:`TrainingVolume` (already normalised: taken as it is).

    ``modality`` ("ct", "mri", "unit") defaults to the guess for the first item that is not
    normalised yet (:func:`napari_patchdiff.io.guess_modality`). ``bin`` averages ``bin x bin``
    blocks of every slice first (2: 512 x 512 CT to the 256 x 256 working size). Raises
    :class:`InputError` for no volumes, slices of different sizes, NaN/Inf, or values outside
    [-0.5, 1.5] after normalisation.
    """
    if modality is not None and modality not in MODALITIES:
        raise InputError(f"unknown modality {modality!r}; choose one of {MODALITIES}")
    bin = int(bin)
    if bin < 1:
        raise InputError(f"bin must be >= 1, got {bin}")
    if isinstance(items, (str, Path, np.ndarray, TrainingVolume)) or _is_named(items):
        items = [items]
    out: list[TrainingVolume] = []
    for i, item in enumerate(items):
        if isinstance(item, TrainingVolume):
            out.append(_binned(item, bin))
        elif isinstance(item, str) and item in SPLITS:
            if modality not in (None, SPLITS[item]):
                raise InputError(f"the {item!r} training set is {SPLITS[item]}, not {modality}")
            modality = SPLITS[item]
            out.extend(_binned(v, bin) for v in load_training_slices(item))
        else:
            name, raw, meta, slices = _raw_item(item, i)
            raw = raw[None] if raw.ndim == 2 else raw
            if raw.ndim != 3:
                raise InputError(f"training volume {name!r} must be 2D or 3D, got shape "
                                 f"{raw.shape}")
            if not np.isfinite(raw).all():
                raise InputError(f"training volume {name!r} contains NaN/Inf")
            if bin > 1:
                raw = _bin(raw, bin, name)
            modality = modality or io.guess_modality(raw, meta)
            out.append(_normalised(raw, modality, name, slices))
    if not out:
        raise InputError("no training volumes given")
    if modality is None:
        raise InputError("give the modality (ct, mri or unit) of already normalised training "
                         "volumes")
    _check(out)
    return out, modality


def _raw_item(item, i: int):
    """``(name, array, metadata, slice indices)`` of a path, an array or a tuple."""
    if isinstance(item, (str, Path)):
        arr, meta = io.read_image(item)
        return Path(item).name, np.asarray(arr), meta, []
    if isinstance(item, np.ndarray):
        return f"volume{i}", item, {}, []
    if _is_named(item):
        extra = item[2] if len(item) == 3 else None
        meta = dict(extra) if isinstance(extra, dict) else {}
        slices = [] if extra is None or isinstance(extra, dict) else list(extra)
        return item[0], np.asarray(item[1]), meta, slices
    raise InputError(f"cannot use {type(item).__name__} as a training volume; pass file paths, "
                     "arrays, (name, array[, metadata or slice indices]) tuples or "
                     "TrainingVolume objects")


def _is_named(item) -> bool:
    """Whether ``item`` is a ``(name, array[, metadata or slice indices])`` tuple."""
    return (isinstance(item, tuple) and len(item) in (2, 3) and isinstance(item[0], str)
            and not isinstance(item[1], (str, Path)))


def _bin(raw: np.ndarray, factor: int, name: str) -> np.ndarray:
    try:
        return bin_blocks(raw, factor)
    except ValueError as exc:
        raise InputError(f"training volume {name!r}: {exc}") from None


def _binned(vol: TrainingVolume, factor: int) -> TrainingVolume:
    if factor == 1:
        return vol
    return TrainingVolume(_bin(vol.data, factor, vol.name), vol.name, vol.slices, vol.scale)


def _normalised(raw: np.ndarray, modality: str, name: str, slices) -> TrainingVolume:
    if modality == "ct" and raw.min() >= 0 and raw.max() <= 1:
        raise InputError(f"training volume {name!r} has values in [0, 1], not Hounsfield units: "
                         "pass it with modality 'unit', or as a TrainingVolume if it is CT "
                         "already normalised")
    try:
        x, scale = normalise(raw, modality)
    except ValueError as exc:  # e.g. an MRI volume of zeros
        raise InputError(f"training volume {name!r}: {exc}") from None
    return TrainingVolume(x, name, slices, scale)


def _check(vols: list[TrainingVolume]) -> None:
    shapes = {v.data.shape[1:] for v in vols}
    if len(shapes) != 1:
        raise InputError(f"all training slices must have the same size, got {sorted(shapes)}")
    for v in vols:
        if not np.isfinite(v.data).all():
            raise InputError(f"training volume {v.name!r} contains NaN/Inf")
        lo, hi = float(v.data.min()), float(v.data.max())
        if lo < -0.5 or hi > 1.5:
            raise InputError(f"training volume {v.name!r} has values in [{lo:g}, {hi:g}]; "
                             "normalise it to [0, 1] first (napari_patchdiff.conventions)")


def split_slices(volumes: Sequence[TrainingVolume], val_fraction: float):
    """Deterministic split by slices: ``(train, val)`` lists of ``(volume_index, local_index)``.

    Every ``k = round(1 / val_fraction)``-th slice of each volume (local indices ``k // 2 + j k``)
    goes to validation; ``val_fraction = 0`` keeps every slice for training.
    """
    if not 0 <= val_fraction < 0.5:
        raise InputError(f"val_fraction must be in [0, 0.5), got {val_fraction}")
    train, val = [], []
    k = round(1 / val_fraction) if val_fraction > 0 else 0
    for vi, v in enumerate(volumes):
        for j in range(v.data.shape[0]):
            (val if k and j % k == k // 2 else train).append((vi, j))
    if not train:
        raise InputError("no training slices left after the validation split")
    return train, val
