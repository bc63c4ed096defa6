"""Image-domain operators: Gaussian blur, super-resolution, inpainting, denoising."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..params import Param
from .base import MIN_NOISE_SAMPLES, Operator, robust_std


class GaussianBlur(Operator):
    """Gaussian blur with a normalised kernel, zero boundary ("same" size output).

    The kernel is separable and symmetric, so the blur runs as two 1D convolutions and is its
    own adjoint (zero padding included). :meth:`estimate_noise` is the default 2D high-pass MAD
    estimator, nearly exact here: the blur leaves almost nothing of the image in the high-pass.
    """

    name = "blur-gaussian"
    initial_name = "blurred image"
    PARAMS = (
        Param("sigma", float, 2.0, "kernel standard deviation in pixels"),
        Param("kernel_size", int, None, "odd kernel width (default: 2 * ceil(3 sigma) + 1)"),
    )

    def _setup(self):
        s = self.params["sigma"]
        if s <= 0:
            raise InputError(f"{self.name}: sigma must be positive, got {s}")
        k = self.params["kernel_size"] or 2 * math.ceil(3 * s) + 1
        if k % 2 == 0 or k < 3:
            raise InputError(f"{self.name}: kernel_size must be odd and >= 3, got {k}")
        self.params["kernel_size"] = k
        r = torch.arange(k, dtype=torch.float64) - k // 2
        g = torch.exp(-0.5 * (r / s) ** 2)
        g = (g / g.sum()).to(self.device, self.dtype)
        self._rows, self._cols = g.view(1, 1, k, 1), g.view(1, 1, 1, k)

    @property
    def kernel(self) -> torch.Tensor:
        """The 2D kernel ``(1, 1, k, k)``."""
        return self._rows * self._cols

    @property
    def measurement_shape(self):
        return self.image_shape

    def _blur(self, x):
        h = self._rows.shape[2] // 2
        return F.conv2d(F.conv2d(x, self._rows, padding=(h, 0)), self._cols, padding=(0, h))

    def forward(self, x):
        return self._blur(self.check_image(x))

    def adjoint(self, y):
        return self._blur(self.check_measurement(y))

    def initial(self, y):
        return self.check_measurement(y).clone()


class SuperResolution(Operator):
    """Down-sampling by average pooling over ``factor x factor`` blocks."""

    name = "superres"
    initial_name = "bicubic upsampling"
    PARAMS = (Param("factor", int, 4, "down-sampling factor (average pooling)"),)

    def _setup(self):
        f = self.params["factor"]
        if f < 1 or any(s % f for s in self.image_shape):
            raise InputError(
                f"{self.name}: factor must be >= 1 and divide the image size {self.image_shape}, "
                f"got {f}"
            )

    @property
    def measurement_shape(self):
        f = self.params["factor"]
        return (self.image_shape[0] // f, self.image_shape[1] // f)

    def forward(self, x):
        return F.avg_pool2d(self.check_image(x), self.params["factor"])

    def adjoint(self, y):
        f = self.params["factor"]
        return F.interpolate(self.check_measurement(y), scale_factor=f, mode="nearest") / f**2

    def initial(self, y):
        y = self.check_measurement(y)
        return F.interpolate(y, scale_factor=self.params["factor"], mode="bicubic",
                             align_corners=False)


class Inpainting(Operator):
    """Keep a random ``fraction`` of pixels (a seeded mask); the rest are missing (zero)."""

    name = "inpaint"
    initial_name = "masked image"
    PARAMS = (
        Param("fraction", float, 0.3, "fraction of pixels observed"),
        Param("mask_seed", int, 0, "seed of the pixel mask"),
    )

    def _setup(self):
        frac = self.params["fraction"]
        if not 0 < frac <= 1:
            raise InputError(f"{self.name}: fraction must be in (0, 1], got {frac}")
        g = torch.Generator().manual_seed(self.params["mask_seed"])
        mask = torch.rand(self.image_shape, generator=g, dtype=torch.float64) < frac
        self.mask = mask.to(self.device, self.dtype)

    @property
    def measurement_shape(self):
        return self.image_shape

    def forward(self, x):
        return self.check_image(x) * self.mask

    def adjoint(self, y):
        return self.check_measurement(y) * self.mask

    def estimate_noise(self, y) -> float:
        """The noise std from the observed pixels only (missing ones are not measured: zero in
        a real measurement, whatever a simulation put there): the MAD of the ``k``-th finite
        differences (unit norm) of runs of ``k + 1`` consecutive observed pixels along rows and
        columns, with the highest ``k <= 4`` that gives at least
        :data:`~.base.MIN_NOISE_SAMPLES` runs (with 30 % observed, ``k = 3`` on a 256 x 256
        image); a fully observed image uses the default 2D estimator."""
        y = self.check_measurement(y).detach().to(torch.float64)
        observed = self.mask > 0
        if bool(observed.all()):
            return super().estimate_noise(y)
        best = None
        for k in (4, 3, 2, 1):
            parts = []
            for dim, m in ((-1, observed), (-2, observed.T)):
                runs = m.unfold(-1, k + 1, 1).all(-1) if m.shape[-1] > k else None
                if runs is None or not bool(runs.any()):
                    continue
                r = torch.diff(y, n=k, dim=dim) / math.sqrt(math.comb(2 * k, k))
                parts.append(r[..., runs] if dim == -1 else r[..., runs.T])
            if parts:
                res = torch.cat(parts, dim=-1)
                best = res
                if res.shape[-1] * y.shape[0] >= MIN_NOISE_SAMPLES:
                    break
        return 0.0 if best is None else robust_std(best)

    def _closed_form_solve(self, z, aty, gamma):
        """``A^T A`` is the diagonal mask: observed pixels move towards the data."""
        if math.isinf(gamma):
            return z + self.mask * (aty - z)
        return (z + gamma * aty) / (1 + gamma * self.mask)


class Denoising(Operator):
    """The identity: the measurement is the noisy image itself."""

    name = "denoise"
    initial_name = "noisy image"

    @property
    def measurement_shape(self):
        return self.image_shape

    def forward(self, x):
        return self.check_image(x).clone()

    def adjoint(self, y):
        return self.check_measurement(y).clone()

    def _closed_form_solve(self, z, aty, gamma):
        """``A^T A = I``: the weighted mean of ``z`` and the data (the data when noiseless)."""
        if math.isinf(gamma):
            return aty.clone()
        return (z + gamma * aty) / (1 + gamma)
