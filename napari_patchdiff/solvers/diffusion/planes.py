"""Which planes of a volume the 2D prior denoises: axial slices, or axial, coronal and sagittal
in turn (tri-planar).

A 2D patch prior sees one plane at a time. For a stack of thick slices (the 5 mm lung, the 6.5 mm
brain volumes) only the axial planes look like its training images, so every step denoises the
axial slices. For a near-isotropic volume whose data couple every slice (3D k-space: the whole
volume is one problem), the coronal and sagittal planes look alike too, and denoising them in
turn lets the prior see structure along z that an axial-only sampler never regularises (the
alternation of planes in Lee, Chung et al., "Improving 3D imaging with pre-trained perpendicular
2D diffusion models", ICCV 2023; written here from the description, no code taken).

Step ``i`` uses plane ``i mod 3`` (axial, coronal, sagittal); ``coronal`` or ``sagittal`` alone
denoise only those planes. With ``mri-cartesian-3d`` the sagittal planes are the slice-wise 2D
reconstruction of the same data: the readout (W) is fully sampled, so after the inverse FFT along
it every sagittal plane (D x H) has its own 2D k-space (kz, ky) under the shared mask, and the
exact 3D data step is the 2D data step of each sagittal plane. A coronal plane of a ``(D, H, W)``
volume is ``(D, W)`` at fixed row ``h``; a sagittal plane ``(D, H)`` at fixed column ``w``; the
prior handles any image size (:data:`~napari_patchdiff.priors.patches.COORDINATE_MAPPING`).
"""
from __future__ import annotations

import torch

from ...params import Param
from .common import denoise

__all__ = ["PLANES", "PLANE_CHOICES", "ISOTROPY", "planes_rule", "plane_of_step",
           "to_planes", "from_planes", "denoise_planes"]

PLANE_CHOICES = ("axial", "triplanar", "coronal", "sagittal")
#: largest / smallest voxel spacing up to which a volume counts as near-isotropic
ISOTROPY = 1.5
PLANES = Param("planes", str, None, "which planes of a volume the 2D prior denoises: 'axial' "
               "(each slice), 'triplanar' (axial, coronal and sagittal in turn across the "
               "steps), or only 'coronal' or 'sagittal' planes; default: triplanar for a "
               "near-isotropic volume (largest / smallest voxel spacing <= 1.5) whose data "
               "couple every slice (mri-cartesian-3d), else axial", PLANE_CHOICES)
_ORDER = ("axial", "coronal", "sagittal")


def planes_rule(ctx) -> str:
    """The default of :data:`PLANES` for a method's context (see its help)."""
    volume = ctx.volume
    if volume is None or volume.depth < 2 or not getattr(ctx.op, "couples_slices", False):
        return "axial"
    spacing = [volume.spacing, *(volume.pixel or (None, None))]
    if any(s is None or s <= 0 for s in spacing):
        return "axial"
    return "triplanar" if max(spacing) / min(spacing) <= ISOTROPY else "axial"


def plane_of_step(planes: str, step: int) -> str:
    """The plane step ``step`` (0-based) denoises: "axial", "coronal" or "sagittal"."""
    return _ORDER[step % 3] if planes == "triplanar" else planes


def to_planes(x: torch.Tensor, depth: int, plane: str) -> torch.Tensor:
    """The images ``(B, 1, H, W)`` of a batch of volumes of ``depth`` slices as a batch of
    ``plane`` images: ``(n H, 1, D, W)`` coronal, ``(n W, 1, D, H)`` sagittal, ``x`` itself
    axial (or when the batch holds no volume, ``depth`` 0)."""
    if plane == "axial" or depth < 2:
        return x
    b, _, h, w = x.shape
    v = x.reshape(b // depth, depth, h, w)
    v = v.permute(0, 2, 1, 3) if plane == "coronal" else v.permute(0, 3, 1, 2)
    return v.reshape(-1, 1, v.shape[2], v.shape[3]).contiguous()


def from_planes(p: torch.Tensor, shape, depth: int, plane: str) -> torch.Tensor:
    """The inverse of :func:`to_planes`: ``p`` back to the axial batch of ``shape``."""
    if plane == "axial" or depth < 2:
        return p
    b, _, h, w = shape
    n = b // depth
    if plane == "coronal":
        v = p.reshape(n, h, depth, w).permute(0, 2, 1, 3)
    else:
        v = p.reshape(n, w, depth, h).permute(0, 2, 3, 1)
    return v.reshape(shape).contiguous()


def denoise_planes(prior, x, sigma, noise, planes: str, depth: int, step: int) -> torch.Tensor:
    """:func:`~.common.denoise` of ``x`` (a batch of volumes of ``depth`` slices, or of images)
    in the plane of step ``step`` (:func:`plane_of_step`), returned as axial images."""
    plane = plane_of_step(planes, step)
    d = denoise(prior, to_planes(x, depth, plane), sigma, noise)
    return from_planes(d, x.shape, depth, plane)
