"""Changing the pixel grid of images and volumes (no package imports).

:func:`bin_blocks` averages ``factor x factor`` blocks of every slice: 512 x 512 CT slices become
the 256 x 256 working size of the shipped priors (the sample data, the training split and the
benchmarks all go through it).
"""
from __future__ import annotations

import numpy as np

__all__ = ["bin_blocks"]


def bin_blocks(volume, factor: int) -> np.ndarray:
    """Average each ``(H, W)`` slice of ``volume`` (2D or slices first) over ``factor x factor``
    blocks, accumulated in float64 and returned as float32; trailing rows and columns that do
    not fill a block are dropped. ``factor`` 1 returns a float32 copy."""
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"the binning factor must be >= 1, got {factor}")
    a = np.asarray(volume)
    if a.ndim not in (2, 3):
        raise ValueError(f"expected a 2D image or a 3D volume, got shape {a.shape}")
    h, w = a.shape[-2] // factor, a.shape[-1] // factor
    if h < 1 or w < 1:
        raise ValueError(f"binning {a.shape[-2:]} by {factor} leaves no pixel")
    a = a[..., : h * factor, : w * factor].astype(np.float64)
    a = a.reshape(*a.shape[:-2], h, factor, w, factor).mean(axis=(-3, -1))
    return a.astype(np.float32)
