"""Circular cone-beam CT of a whole volume through ODL 1.0 and ASTRA's CUDA projector.

A point source circles the volume's z axis (the slice axis) and a flat detector of ``detectors``
columns by ``depth`` rows faces it; ``views`` source positions uniform on ``[0,
angular_range)``. The rays cross the slices, so the data couple them (:attr:`couples_slices`):
the operator takes the batch as whole volumes of ``depth`` slices, like
:mod:`.mri3d`. The central plane is the fan-beam geometry of ``ct-fan`` (same source and
detector distances), so with a thin volume the central detector row is the ``ct-fan``
sinogram of the central slice.

Layout: a volume ``(D, 1, H, W)`` maps to ``(D, 1, views, detectors)``: row ``d`` of the
detector (bottom to top, along z) is item ``d`` of the measurement batch, so a cone-beam scan
stacks like the sinograms of a stack of fan-beam slices. Units as the 2D CT operators: pixel
size 1 in the plane, slices ``slice_thickness`` pixels apart; line integrals of the normalised
attenuation in pixel-length units.

ASTRA projects cone beams on the GPU only, so the operator runs on a CUDA device whose ASTRA
has CUDA and refuses any other device when it is built (:attr:`needs_cuda`). ``initial`` is
ODL's FDK-type filtered back-projection (Hann filter, frequency scaling 0.9), approximate for a
cone.
"""
from __future__ import annotations

import math

import numpy as np
import odl
import torch
from odl.applications import tomo

from ..errors import InputError
from ..params import Param
from .base import VolumeOperator
from .ct import _CTBase


def cuda_ready() -> tuple[bool, str]:
    """Whether cone-beam CT can run here: torch sees a CUDA device and ASTRA has CUDA; else
    why not, in words."""
    if not tomo.ASTRA_AVAILABLE:
        return False, "the astra-toolbox package is not installed"
    if not torch.cuda.is_available():
        return False, "torch sees no CUDA device on this computer"
    if not tomo.ASTRA_CUDA_AVAILABLE:
        return False, "this astra-toolbox was built without CUDA"
    return True, ""


class _VolumeApply(torch.autograd.Function):
    """Apply an ODL operator to each volume of a batch; the backward pass applies its adjoint.

    ``to_odl`` and ``from_odl`` convert one volume (or its data) between the batch layout and
    ODL's array, the same way in both directions; ``volumes`` splits a batch into volumes."""

    @staticmethod
    def forward(ctx, x, op, to_odl, from_odl, volumes):
        ctx.op, ctx.conv = op, (to_odl, from_odl, volumes)
        arr = x.detach().to("cpu", torch.float32).numpy()
        parts = [from_odl(np.asarray(op(to_odl(v)).asarray())) for v in volumes(arr)]
        return torch.from_numpy(np.concatenate(parts)).to(device=x.device, dtype=x.dtype)

    @staticmethod
    def backward(ctx, grad):
        return (_VolumeApply.apply(grad, ctx.op.adjoint, *ctx.conv),
                None, None, None, None)


class ConeBeamCT(VolumeOperator, _CTBase):
    """Circular cone-beam CT of a volume (flat detector; CUDA only): `views` source positions
    uniform on [0, angular_range), the rays crossing the slices."""

    name = "ct-cone"
    full_range = 360.0
    needs_cuda = True
    measurement_units = ("line integrals of normalised attenuation, pixel-length units; item d "
                         "of the batch is detector row d")
    PARAMS = (
        Param("views", int, 60, "number of source positions"),
        Param("angular_range", float, 360.0, "angular range in degrees (full scan: 360)"),
        Param("src_radius", float, 500.0, "source to rotation axis distance, in pixels"),
        Param("det_radius", float, 500.0, "rotation axis to detector distance, in pixels"),
        Param("detectors", int, None, "detector columns (default: 2 * max(H, W))"),
        Param("slice_thickness", float, 1.0, "distance between slices, in in-plane pixels",
              low=0, open_low=True),
        Param("depth", int, None, "slices of the volume, which the rays cross (default: set "
              "from the volume)", low=2),
    )

    @classmethod
    def default_device(cls) -> str:
        """``"cuda"`` where cone beams can be projected (:func:`cuda_ready`), else ``"cpu"``
        (where building it says why it cannot run)."""
        return "cuda" if cuda_ready()[0] else "cpu"

    def _setup(self):
        ok, why = cuda_ready()
        if not ok or self.device.type != "cuda":
            raise InputError(
                f"{self.name} needs a CUDA GPU: ASTRA projects cone beams on the GPU only, and "
                f"{why or f'the device is {self.device}'}; give device='cuda' on a computer "
                f"with one, or reconstruct slice by slice with ct-fan")
        self._check_scan()
        if self.params["depth"] is None:
            raise InputError(f"{self.name} measures a whole volume: give depth (simulate and "
                             f"from_measurement set it from the volume)")
        h, w = self.image_shape
        d, t = self.params["depth"], self.params["slice_thickness"]
        space = odl.uniform_discr([-h / 2, -w / 2, -d * t / 2], [h / 2, w / 2, d * t / 2],
                                  (h, w, d), dtype="float32")
        self.ray = tomo.RayTransform(space, self._geometry(space), impl="astra_cuda")
        self.fbp_op = tomo.fbp_op(self.ray, filter_type="Hann", frequency_scaling=0.9)
        self._meas_shape = (self.params["views"], self.params["detectors"])
        self.backend, self._matrices = "odl", None

    def _geometry(self, space):
        h, w = self.image_shape
        d, t = self.params["depth"], self.params["slice_thickness"]
        r_obj = math.sqrt(h * h + w * w) / 2
        src, det = self.params["src_radius"], self.params["det_radius"]
        # columns: the fan over the circumscribed circle (as ct-fan); rows: the volume's height
        # magnified from its point nearest the source, with 5 % to spare
        half_u = self._fan_half_width()
        half_v = 1.05 * (src + det) * (d * t / 2) / (src - r_obj)
        n = self._detector_count(2 * max(h, w))
        dpart = odl.uniform_partition([-half_u, -half_v], [half_u, half_v], (n, d))
        return tomo.ConeBeamGeometry(self._angles(), dpart, src_radius=src, det_radius=det)

    # -- layouts: a volume (D, 1, H, W) <-> ODL's (H, W, D); data (D, 1, V, U) <-> (V, U, D)
    @staticmethod
    def _image_to_odl(v):
        return np.ascontiguousarray(v[:, 0].transpose(1, 2, 0))

    @staticmethod
    def _image_from_odl(a):
        return np.ascontiguousarray(a.transpose(2, 0, 1))[:, None]

    def _split(self, arr):
        return list(self._volumes(torch.from_numpy(arr))[0].unsqueeze(2).numpy())

    @property
    def measurement_shape(self):
        return self._meas_shape

    def forward(self, x):
        x = self.check_image(x)
        return _VolumeApply.apply(x, self.ray, self._image_to_odl, self._image_from_odl,
                                  self._split)

    def adjoint(self, y):
        y = self.check_measurement(y)
        return _VolumeApply.apply(y, self.ray.adjoint, self._image_to_odl,
                                  self._image_from_odl, self._split)

    def initial(self, y):
        """FDK-type filtered back-projection (ODL's ``fbp_op``; Hann, frequency scaling 0.9)."""
        y = self.check_measurement(y)
        return _VolumeApply.apply(y, self.fbp_op, self._image_to_odl, self._image_from_odl,
                                  self._split)

    def estimate_noise(self, y) -> float:
        """The noise std from the 4th-difference high-pass along the detector columns (as the
        2D CT operators' second estimate; the rays that miss the volume are not counted
        apart here)."""
        return self._detector_noise(self.check_measurement(y).detach().to(torch.float64))
