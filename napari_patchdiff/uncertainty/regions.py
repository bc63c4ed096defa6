"""Regions of an image for region statistics: boxes or masks, from Python or the command line."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError

__all__ = ["parse_region", "parse_roi", "roi_mask", "region_note"]


def parse_region(text: str):
    """A region from the command line, not yet checked against an image: a box
    ``[(y0, y1), (x0, x1)]`` from ``y0:y1,x0:x1`` (pixels, half-open; ``z0:z1,y0:y1,x0:x1`` for a
    volume) or a boolean mask array from the path of a mask image (nonzero = inside)."""
    if Path(text).suffix.lower() in (".tif", ".tiff", ".npy"):
        from .. import io

        mask, _ = io.read_image(text)
        return np.asarray(mask) != 0
    try:
        box = [tuple(int(v) for v in part.split(":")) for part in text.split(",")]
    except ValueError:
        raise InputError(f"--roi {text!r}: expected y0:y1,x0:x1 or a mask file") from None
    if any(len(b) != 2 for b in box):
        raise InputError(f"--roi {text!r}: expected start:stop for each axis")
    return box


def parse_roi(text: str, shape) -> np.ndarray:
    """The mask of a command-line region (:func:`parse_region`) in an image of ``shape``."""
    return roi_mask(parse_region(text), shape)


def _box(roi, shape) -> list[tuple[int, int]]:
    box = [tuple(b) for b in roi]
    if len(box) not in (2, len(shape)) or any(len(b) != 2 for b in box):
        raise InputError(f"a region box needs one (start, stop) per axis of {shape}, got {roi}")
    for a, b in box:
        if int(a) != a or int(b) != b or a < 0 or b <= a:
            raise InputError(f"a region box needs whole pixel numbers 0 <= start < stop, got "
                             f"{roi}")
    return [(int(a), int(b)) for a, b in box]


def region_note(roi, shape) -> str | None:
    """A sentence saying how a box ``roi`` was clipped to an image of ``shape``, or None when it
    lies inside (masks are never clipped: a mask of another shape is refused)."""
    if isinstance(roi, np.ndarray):
        return None
    box = _box(roi, shape)
    axes = shape[-len(box):]
    clipped = [(a, b, n) for (a, b), n in zip(box, axes) if b > n]
    if not clipped:
        return None
    kept = ",".join(f"{a}:{min(b, n)}" for (a, b), n in zip(box, axes))
    return (f"the region {','.join(f'{a}:{b}' for a, b in box)} reaches past the image of shape "
            f"{tuple(shape)}; clipped to {kept}")


def roi_mask(roi, shape) -> np.ndarray:
    """A boolean mask of ``shape`` from a mask array (2D masks apply to every slice of a volume)
    or a box ``[(y0, y1), (x0, x1)]`` (with a leading ``(z0, z1)`` for volumes; a box reaching
    past the image is clipped to it, see :func:`region_note`)."""
    shape = tuple(shape)
    if isinstance(roi, np.ndarray):
        m = roi.astype(bool)
        if m.shape == shape[-2:] and len(shape) == 3:
            m = np.broadcast_to(m, shape)
        if m.shape != shape:
            raise InputError(f"the region mask has shape {m.shape}; the image has {shape}")
    else:
        box = _box(roi, shape)
        m = np.zeros(shape, dtype=bool)
        index = tuple(slice(a, b) for a, b in box)
        m[(Ellipsis, *index) if len(box) == 2 else index] = True
    if not m.any():
        raise InputError(f"the region {roi if not isinstance(roi, np.ndarray) else 'mask'} is "
                         f"empty inside the image of shape {shape}")
    return np.ascontiguousarray(m)
