"""Parallel-beam and fan-beam CT through ODL 1.0 with the ASTRA backend, wrapped for torch.

Geometry convention: the image covers ``[-W/2, W/2] x [-H/2, H/2]`` with pixel size 1, so a
measurement is a line integral of the normalised attenuation in pixel-length units (a ray through
100 pixels of water, value 0.5, measures 50). ASTRA computes in float32; float64 inputs are cast
for the projection and the result is cast back, so adjoint tests hold to ~1e-6 relative.

Two backends compute the same ray transform:

``matrix`` (default)
    The sparse system matrix of the very ASTRA projector that ODL's ``RayTransform`` runs
    (built once per geometry through ODL's own ASTRA set-up and cached), applied with torch
    sparse products: batched, on CPU or CUDA; on the development CPU 1.5-2x faster than ODL
    for one slice and 8-14x for 11 slices (``benchmarks/results/ct_backends.md``).
    Used while the matrix fits :data:`MATRIX_BUDGET` non-zeros.
``odl``
    ``odl.applications.tomo.RayTransform`` called slice by slice (``astra_cuda`` on CUDA
    devices where ASTRA has CUDA, else ``astra_cpu``).

FBP always goes through ODL (``fbp_op``, Hann filter, frequency scaling 0.9).
"""
from __future__ import annotations

import math

import numpy as np
import odl
import torch
from odl.applications import tomo

from ..errors import InputError
from ..params import Param
from .base import MIN_NOISE_SAMPLES, Operator, highpass, robust_std


def _astra_impl(device: torch.device) -> str:
    if device.type == "cuda" and tomo.ASTRA_CUDA_AVAILABLE:
        return "astra_cuda"
    if not tomo.ASTRA_AVAILABLE:
        raise InputError("CT operators need the astra-toolbox package (pip install astra-toolbox)")
    return "astra_cpu"


#: largest system matrix (non-zeros) the ``matrix`` backend builds; about 12 bytes each, twice
MATRIX_BUDGET = 40_000_000


_MATRICES: dict = {}


def _cached_matrices(key, ray, device_str: str):
    """:func:`_system_matrix`, built once per geometry ``key`` and device in this process."""
    if key not in _MATRICES:
        if len(_MATRICES) >= 8:
            _MATRICES.pop(next(iter(_MATRICES)))
        _MATRICES[key] = _system_matrix(ray, device_str)
    return _MATRICES[key]


def _system_matrix(ray, device_str: str):
    """The ASTRA projector of ``ray`` as torch sparse CSR matrices ``(W, W^T)``.

    Built with ODL's own ASTRA set-up functions, so the projector type and geometry are exactly
    those of ``ray``; ODL applies no forward scaling, and its adjoint scaling is returned too.
    """
    import warnings

    import astra
    from odl.applications.tomo.backends import astra_setup
    from odl.applications.tomo.backends.astra_cpu import default_astra_proj_type

    vol = astra_setup.astra_volume_geometry(ray.domain, "cpu")
    proj = astra_setup.astra_projection_geometry(ray.geometry, "cpu")
    pid = astra_setup.astra_projector(default_astra_proj_type(ray.geometry), vol, proj, 2)
    mid = astra.projector.matrix(pid)
    try:
        w = astra.matrix.get(mid).tocsr()
    finally:
        astra.matrix.delete(mid)
        astra.projector.delete(pid)
    adjoint_scale = float(ray.domain.weighting.const) / float(ray.range.weighting.const)
    wt = w.T.tocsr()

    # 32-bit indices on the CPU where they fit: the products are 1.3-1.5x as fast (less memory
    # to stream) with bit-identical results
    index = (np.int32 if device_str == "cpu" and max(w.nnz, *w.shape) < 2**31 - 1
             else np.int64)

    def to_torch(m, scale=1.0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            return torch.sparse_csr_tensor(
                torch.from_numpy(m.indptr.astype(index)),
                torch.from_numpy(m.indices.astype(index)),
                torch.from_numpy((m.data * scale).astype(np.float32)),
                size=m.shape,
            ).to(device_str)

    return to_torch(w), to_torch(wt, adjoint_scale)


class _MatrixApply(torch.autograd.Function):
    """``y = W x`` for a batch of slices; the backward pass applies ``W^T``."""

    @staticmethod
    def forward(ctx, x, w, wt, out_shape):
        ctx.wt, ctx.w, ctx.in_shape = wt, w, tuple(x.shape[2:])
        flat = x.detach().reshape(x.shape[0], -1).to(torch.float32).T.contiguous()
        out = (w @ flat).T.reshape(x.shape[0], 1, *out_shape)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        return _MatrixApply.apply(grad, ctx.wt, ctx.w, ctx.in_shape), None, None, None


class _OdlApply(torch.autograd.Function):
    """Apply an ODL operator slice by slice; the backward pass applies its adjoint."""

    @staticmethod
    def forward(ctx, x, op, out_shape):
        ctx.op = op
        ctx.in_shape = tuple(x.shape[2:])
        arr = x.detach().to("cpu", torch.float32).numpy()
        out = np.empty((arr.shape[0], 1, *out_shape), dtype=np.float32)
        for i in range(arr.shape[0]):
            out[i, 0] = np.asarray(op(arr[i, 0]).asarray())
        return torch.from_numpy(out).to(device=x.device, dtype=x.dtype)

    @staticmethod
    def backward(ctx, grad):
        return _OdlApply.apply(grad, ctx.op.adjoint, ctx.in_shape), None, None


#: how the ray transform is computed: not part of the measurement's geometry
BACKEND = Param("backend", str, "matrix", "ray transform backend", ("matrix", "odl"),
                measured=False)


class _CTBase(Operator):
    initial_name = "fbp"
    #: what it measures: the modality of a truth the values cannot tell (problem.load_truth)
    modality = "ct"
    measurement_units = "line integrals of normalised attenuation, pixel-length units"
    #: the angular range of a complete scan, in degrees
    full_range = 180.0

    def _geometry(self, space):
        raise NotImplementedError

    def _check_scan(self) -> None:
        """InputError unless there is at least one view over an angular range in (0, 360]."""
        if self.params["views"] < 1:
            raise InputError(f"{self.name}: views must be >= 1, got {self.params['views']}")
        if not 0 < self.params["angular_range"] <= 360:
            raise InputError(
                f"{self.name}: angular_range must be in (0, 360] degrees, "
                f"got {self.params['angular_range']}"
            )

    def _setup(self):
        self._check_scan()
        h, w = self.image_shape
        space = odl.uniform_discr([-h / 2, -w / 2], [h / 2, w / 2], (h, w), dtype="float32")
        self.ray = tomo.RayTransform(space, self._geometry(space), impl=_astra_impl(self.device))
        self.fbp_op = tomo.fbp_op(self.ray, filter_type="Hann", frequency_scaling=0.9)
        self._meas_shape = tuple(self.ray.range.shape)
        backend = self.params["backend"]
        if backend == "matrix" and self._matrix_nnz_estimate() > MATRIX_BUDGET:
            backend = "odl"  # too large a matrix for memory: fall back to per-slice ODL calls
        key = (self.name, self.image_shape, tuple(sorted(self.params.items())), str(self.device))
        self._matrices = (_cached_matrices(key, self.ray, str(self.device))
                          if backend == "matrix" else None)
        self.backend = backend

    def _fan_half_width(self) -> float:
        """Half the width of a flat detector that sees the fan over the image's circumscribed
        circle from ``src_radius`` (5 % to spare); InputError when the source is inside it."""
        h, w = self.image_shape
        r_obj = math.sqrt(h * h + w * w) / 2
        src, det = self.params["src_radius"], self.params["det_radius"]
        if src <= r_obj * 1.01 or det <= 0:
            raise InputError(
                f"{self.name}: src_radius must exceed the image half-diagonal ({r_obj:.0f} px) and "
                f"det_radius must be positive; got {src}, {det}"
            )
        return 1.05 * (src + det) * math.tan(math.asin(r_obj / src))

    def _matrix_nnz_estimate(self) -> int:
        h, w = self.image_shape
        return int(2 * self._meas_shape[0] * self._meas_shape[1] * max(h, w))

    def _angles(self):
        return odl.uniform_partition(0.0, math.radians(self.params["angular_range"]), self.params["views"])

    def _detector_count(self, default):
        n = self.params.get("detectors")
        n = default if n is None else n
        if n < 2:
            raise InputError(f"{self.name}: detectors must be >= 2, got {n}")
        self.params["detectors"] = n
        return n

    @property
    def measurement_shape(self):
        return self._meas_shape

    @property
    def coverage(self) -> float:
        """The fraction of a complete scan's angular range the views cover (below 1: limited
        angle)."""
        return min(self.params["angular_range"], self.full_range) / self.full_range

    @property
    def undersampling_factor(self) -> float:
        """``(60 / views) / coverage^3``, with :attr:`coverage` the fraction of a complete
        scan's angular range: on the validation slices (``benchmarks/classical.py --tune``) the
        best TV weight grew like ``60 / views`` for sparse-view CT (reference: 60 views over
        the full range) and about like the cube of the missing-angle ratio for limited
        angle."""
        return (60.0 / self.params["views"]) / self.coverage**3

    def forward(self, x):
        x = self.check_image(x)
        if self._matrices is not None:
            return _MatrixApply.apply(x, *self._matrices, self._meas_shape)
        return _OdlApply.apply(x, self.ray, self._meas_shape)

    def adjoint(self, y):
        y = self.check_measurement(y)
        if self._matrices is not None:
            return _MatrixApply.apply(y, *self._matrices[::-1], self.image_shape)
        return _OdlApply.apply(y, self.ray.adjoint, self.image_shape)

    def rays_missing_image(self) -> torch.Tensor:
        """Boolean ``measurement_shape`` mask of the rays that miss the image square (their
        row of the system matrix is empty: ``A 1 = 0``); computed once per operator."""
        if getattr(self, "_missing", None) is None:
            with torch.no_grad():
                ones = torch.ones((1, 1, *self.image_shape), device=self.device, dtype=self.dtype)
                hits = self.forward(ones)[0, 0].abs()
            self._missing = hits <= 1e-6 * float(hits.max().clamp_min(1e-30))
        return self._missing

    def estimate_noise(self, y) -> float:
        """The noise std in line-integral units, the smaller of two MAD estimates:

        * the rays that miss the image square (about 10 % of a parallel-beam sinogram with the
          default detector, which spans the image diagonal): this model measures exactly 0
          there, so those bins are pure noise (MAD about their median, which also tolerates a
          constant offset);
        * the 4th-difference high-pass along the detector axis (:func:`~.base.highpass`):
          sinograms are smooth along the detector (adjacent rays nearly coincide), unlike
          along the views of a sparse-view scan; texture leaks a little into it (on the
          sample CT slices noiseless sinograms give about 0.05-0.15).

        The first is used only with at least :data:`~.base.MIN_NOISE_SAMPLES` bins."""
        y = self.check_measurement(y).detach().to(torch.float64)
        estimates = []
        missing = self.rays_missing_image()
        if int(missing.sum()) * y.shape[0] >= MIN_NOISE_SAMPLES:
            estimates.append(robust_std(y[:, :, missing], centre=True))
        estimates.append(self._detector_noise(y))
        return min(estimates)

    @staticmethod
    def _detector_noise(y: torch.Tensor) -> float:
        """The noise std from the 4th-difference high-pass along the detector (the last axis;
        a lower order on a short detector)."""
        return robust_std(highpass(y, max(1, min(4, y.shape[-1] - 1)), dims=(-1,)))

    def initial(self, y):
        """Filtered back-projection with a Hann filter (frequency scaling 0.9)."""
        y = self.check_measurement(y)
        return _OdlApply.apply(y, self.fbp_op, self.image_shape)


class ParallelBeamCT(_CTBase):
    """Parallel-beam CT: `views` angles uniform on [0, angular_range) degrees (180 = full)."""

    name = "ct-parallel"
    PARAMS = (
        Param("views", int, 60, "number of projection angles (8, 20, 60: sparse view)"),
        Param("angular_range", float, 180.0, "angular range in degrees (180 full; 90 or 120 limited angle)"),
        Param("detectors", int, None, "detector pixels (default: ceil(sqrt(2) * max(H, W)))"),
        BACKEND,
    )

    def _geometry(self, space):
        h, w = self.image_shape
        n = self._detector_count(int(math.ceil(math.sqrt(2) * max(h, w))))
        half = math.sqrt(h * h + w * w) / 2
        return tomo.Parallel2dGeometry(self._angles(), odl.uniform_partition(-half, half, n))


class FanBeamCT(_CTBase):
    """Fan-beam CT with a flat detector: `views` source positions uniform on [0, angular_range)."""

    name = "ct-fan"
    full_range = 360.0
    PARAMS = (
        Param("views", int, 60, "number of source positions"),
        Param("angular_range", float, 360.0, "angular range in degrees (full fan-beam scan: 360)"),
        Param("src_radius", float, 500.0, "source to rotation centre distance, in pixels"),
        Param("det_radius", float, 500.0, "rotation centre to detector distance, in pixels"),
        Param("detectors", int, None, "detector pixels (default: 2 * max(H, W))"),
        BACKEND,
    )

    def _geometry(self, space):
        h, w = self.image_shape
        src, det = self.params["src_radius"], self.params["det_radius"]
        half = self._fan_half_width()
        n = self._detector_count(2 * max(h, w))
        return tomo.FanBeamGeometry(
            self._angles(), odl.uniform_partition(-half, half, n), src_radius=src, det_radius=det
        )
