"""Regions of an image for region statistics: boxes or masks, from Python or the command line."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError

__all__ = ["parse_roi", "roi_mask"]


def parse_roi(text: str, shape) -> np.ndarray:
    """A region from the command line: ``y0:y1,x0:x1`` (pixels, half-open; ``z0:z1,y0:y1,x0:x1``
    for a volume) or the path of a mask image (nonzero = inside)."""
    if Path(text).suffix.lower() in (".tif", ".tiff", ".npy"):
        from .. import io

        mask, _ = io.read_image(text)
        return roi_mask(np.asarray(mask) != 0, shape)
    try:
        box = [tuple(int(v) for v in part.split(":")) for part in text.split(",")]
    except ValueError:
        raise InputError(f"--roi {text!r}: expected y0:y1,x0:x1 or a mask file") from None
    return roi_mask(box, shape)


def roi_mask(roi, shape) -> np.ndarray:
    """A boolean mask of ``shape`` from a mask array (2D masks apply to every slice of a volume)
    or a box ``[(y0, y1), (x0, x1)]`` (with a leading ``(z0, z1)`` for volumes)."""
    shape = tuple(shape)
    if isinstance(roi, np.ndarray):
        m = roi.astype(bool)
        if m.shape == shape[-2:] and len(shape) == 3:
            m = np.broadcast_to(m, shape)
        if m.shape != shape:
            raise InputError(f"the region mask has shape {m.shape}; the image has {shape}")
    else:
        box = [tuple(b) for b in roi]
        if len(box) not in (2, len(shape)) or any(len(b) != 2 for b in box):
            raise InputError(f"a region box needs one (start, stop) per axis of {shape}, got {roi}")
        m = np.zeros(shape, dtype=bool)
        index = tuple(slice(a, b) for a, b in box)
        m[(Ellipsis, *index) if len(box) == 2 else index] = True
    if not m.any():
        raise InputError(f"the region {roi if not isinstance(roi, np.ndarray) else 'mask'} is "
                         f"empty inside the image of shape {shape}")
    return np.ascontiguousarray(m)
