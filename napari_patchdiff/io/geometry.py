"""A volume's affine as a viewer's voxel grid, and back (pure numpy: no napari here).

The package's affine maps ``(slice, row, col, 1)`` to world mm (RAS+, as NIfTI; a 2D image is
the one slice of ``(1, rows, cols)``). A viewer such as napari shows each array axis along one
world axis of its own, with a ``scale`` (the voxel size) and a ``translate`` (where voxel 0
sits). :func:`grid_of_affine` gives those: the scale is the length of each voxel axis, the
translate is voxel 0's world position measured along that axis' own direction, so volumes that
share an orientation (e.g. a result and its input, or two series of one study) overlay with
their true offsets. What this cannot show, the rotation of an oblique volume (and any shear),
is named in the returned note; the affine itself stays in the metadata.
:func:`affine_of_grid` is the inverse for a layer without an affine, and
:func:`slice_affine` the affine of one slice of a volume.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["grid_of_affine", "affine_of_grid", "slice_affine"]

_WORLD = "xyz"  # RAS+: +x right, +y anterior, +z superior
#: the world axis each array axis follows when no affine says otherwise: slices along z, rows
#: along x, columns along y (the choice of :func:`napari_patchdiff.io.nifti.write_nifti`)
_DEFAULT_AXES = (2, 0, 1)


def grid_of_affine(affine, ndim: int) -> tuple[tuple, tuple, str]:
    """``(scale, translate, note)`` of the last ``ndim`` voxel axes of a package ``affine``
    (4x4). ``note`` says along which world axes the voxel axes run, or, for an oblique or
    sheared affine, by how much they are tilted and that the viewer drops this."""
    a = np.asarray(affine, dtype=np.float64)
    cols = a[:3, 3 - ndim:3]
    scale = np.linalg.norm(cols, axis=0)
    units = cols / scale
    translate = units.T @ a[:3, 3]
    biggest = np.abs(units).max(axis=0)
    tilt = max(math.degrees(math.acos(min(1.0, float(b)))) for b in biggest)
    gram = units.T @ units
    shear = float(np.abs(gram - np.eye(ndim)).max())
    if tilt < 1e-3 and shear < 1e-6:
        names = [("+" if units[k, i] > 0 else "-") + _WORLD[k]
                 for i, k in enumerate(np.abs(units).argmax(axis=0))]
        note = (f"axis-aligned: the voxel axes run along world {', '.join(names)} (RAS mm); "
                "translate is voxel 0's position along each")
    else:
        sheared = (f" and sheared (axes {math.degrees(math.acos(1 - shear)):.1f}° from "
                   "perpendicular)" if shear >= 1e-6 else "")
        note = (f"oblique: the voxel axes are tilted up to {tilt:.1f}° from the world x/y/z "
                f"axes{sheared}; the viewer shows the voxel grid (scale = spacing, translate = "
                "voxel 0 along each axis) and drops the tilt, so layers of another orientation "
                "do not overlay; the full affine stays in metadata['affine'] and the NIfTI "
                "writer saves it")
    return (tuple(float(s) for s in scale), tuple(float(t) for t in translate), note)


def affine_of_grid(scale, translate=None) -> list[list[float]]:
    """The package affine (4x4) of a 2D or 3D grid with ``scale`` and ``translate`` per axis,
    its axes along the default world axes (slices z, rows x, columns y), so that
    :func:`grid_of_affine` gives ``scale`` and ``translate`` back."""
    scale = [float(s) for s in scale]
    ndim = len(scale)
    if ndim not in (2, 3):
        raise ValueError(f"a grid needs 2 or 3 axes, got scale {scale}")
    translate = [0.0] * ndim if translate is None else [float(t) for t in translate]
    full_s = [1.0] * (3 - ndim) + scale
    full_t = [0.0] * (3 - ndim) + translate
    a = np.zeros((4, 4))
    for axis, world in enumerate(_DEFAULT_AXES):
        a[world, axis] = full_s[axis]
        a[world, 3] = full_t[axis]
    a[3, 3] = 1.0
    return a.tolist()


def slice_affine(affine, index: int) -> list[list[float]]:
    """The affine of slice ``index`` of a volume (as the one slice of ``(1, rows, cols)``)."""
    a = np.array(affine, dtype=np.float64)
    a[:, 3] += index * a[:, 0]
    return a.tolist()
