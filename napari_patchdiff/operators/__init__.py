"""Forward operators, by name. ``make_operator("ct-parallel", (256, 256), views=20)``.

With :mod:`napari_patchdiff.io`, the bottom layer: the operators and the linear algebra they and
the solvers share (:mod:`~napari_patchdiff.operators.linalg`) import only the vocabulary
(errors, params, registry)."""
from __future__ import annotations

from ..registry import Registry
from ..params import Param
from .base import Operator, as_batch
from .ct import FanBeamCT, ParallelBeamCT
from .ct_cone import ConeBeamCT
from .imaging import Denoising, GaussianBlur, Inpainting, SuperResolution
from .mri import CartesianMRI, line_mask
from .mri3d import CartesianMRI3D, phase_encode_mask
from .noise import add_noise

OPERATORS: Registry[type[Operator]] = Registry("operator")
for _cls in (ParallelBeamCT, FanBeamCT, ConeBeamCT, CartesianMRI, CartesianMRI3D, GaussianBlur,
             SuperResolution, Inpainting, Denoising):
    OPERATORS.register(_cls.name)(_cls)


def make_operator(name: str, image_shape, device="cpu", dtype=None, **params) -> Operator:
    """Build the operator registered as ``name`` for slices of ``image_shape``."""
    import torch

    cls = OPERATORS.get(name)
    return cls(image_shape, device=device, dtype=dtype or torch.float32, **params)


__all__ = ["OPERATORS", "Operator", "Param", "as_batch", "make_operator", "add_noise", "line_mask",
           "phase_encode_mask"]
