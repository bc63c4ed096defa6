"""Single-coil 3D Cartesian MRI: ``y = M F3 x`` of a whole volume ``(D, H, W)``.

The readout runs along the last axis (``W``, kx) and is fully sampled; the two phase-encoding
directions, ky (``H``) and kz (``D``), are undersampled by one 2D mask over the ky-kz plane,
shared by every readout line: a variable-density Poisson disc, or Cartesian lines (whole ky rows:
every kz of a kept ky), each with a fully sampled centre (the calibration region). ``F3`` is the
orthonormal 3D FFT with the centre of k-space in the middle (``fftshift``), so the data have the
image's energy and noise has the same std in k-space as in the image.

Layout: like every operator it takes a batch of slices ``(B, 1, H, W)`` and returns a batch
``(B, 1, H, W)`` of complex k-space planes; here the batch is one volume (plane ``d`` of the
measurement is ``kz = d - D // 2``), or, with the parameter ``depth`` set, ``B / depth`` volumes
of ``depth`` slices each (an ensemble repeats the volume). The data couple every slice
(:attr:`couples_slices`): :func:`~napari_patchdiff.recon.problem.simulate` and
``from_measurement`` set ``depth`` from the volume and refuse a 2D image
(:meth:`~.base.Operator.volume_params`), a volume run never
splits the volume into windows (:func:`~napari_patchdiff.recon.runs.iterate`), and ``slice=``
of a measured stack is refused. Without ``depth`` (an operator built directly) each call's
whole batch is one volume.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..errors import InputError
from ..params import Param
from .base import MIN_NOISE_SAMPLES, VolumeOperator, robust_std

#: growth of the Poisson disc's radius from the centre of the ky-kz plane to its edge: the
#: radius is ``s (1 + VD_SLOPE rho)`` (``rho`` 0 at the centre, 1 at the corners), so the
#: sampling density falls about ninefold from the centre to the corners
VD_SLOPE = 2.0
#: the fully sampled centre of a Poisson disc mask by default: this fraction of each of ky, kz
POISSON_CENTRE = 0.08


def _centre_block(n: int, fraction: float) -> slice:
    """The centred indices (``fftshift`` layout, DC at ``n // 2``) of a fully sampled centre:
    ``fraction`` of ``n``, at least 2 (and at most ``n``)."""
    c = min(n, max(2, int(round(n * fraction))))
    lo = n // 2 - c // 2
    return slice(lo, lo + c)


def _draw_disc(order: np.ndarray, radius: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Dart throwing on the grid: points in ``order`` are kept unless a kept point (those of
    ``start`` first) lies closer than the mean of their two radii."""
    d, h = radius.shape
    reach = int(math.ceil(float(radius.max())))
    offsets = np.arange(-reach, reach + 1, dtype=np.float64)
    stencil = np.sqrt(offsets[:, None] ** 2 + offsets[None, :] ** 2)
    kept = start.copy()
    blocked = start.copy()
    flat = blocked.reshape(-1)

    def keep(i: int, j: int) -> None:
        z0, z1, y0, y1 = max(0, i - reach), min(d, i + reach + 1), max(0, j - reach), \
            min(h, j + reach + 1)
        dist = stencil[z0 - i + reach:z1 - i + reach, y0 - j + reach:y1 - j + reach]
        blocked[z0:z1, y0:y1] |= dist < 0.5 * (radius[i, j] + radius[z0:z1, y0:y1])

    for i, j in zip(*np.nonzero(start)):
        keep(int(i), int(j))
    for idx in order.tolist():
        if not flat[idx]:
            i, j = divmod(idx, h)
            kept[i, j] = True
            keep(i, j)
    return kept


@functools.lru_cache(maxsize=32)
def phase_encode_mask(depth: int, height: int, acceleration: int, kind: str, centre: float,
                      seed: int = 0) -> np.ndarray:
    """Boolean mask ``(depth, height)`` over the kz-ky plane (centred layout) keeping
    ``round(depth * height / acceleration)`` phase encodes, a fully sampled centre among them:

    * ``"poisson"``: a variable-density Poisson disc (dart throwing in a seeded random order,
      radius growing :data:`VD_SLOPE`-fold towards the corners), its scale bisected until it
      keeps at least the target count, then seeded random points outside the centre dropped
      down to the target; the centre is ``centre`` of each axis (a rectangle);
    * ``"lines"``: whole ky rows (every kz of a kept ky): ``centre`` of the ky rows around the
      middle and seeded random rows elsewhere (uniform, as the 2D ``random`` mask).

    Deterministic given the arguments (cached)."""
    if acceleration < 1:
        raise InputError(f"acceleration must be >= 1, got {acceleration}")
    if kind not in ("poisson", "lines"):
        raise InputError(f"mask must be 'poisson' or 'lines', got {kind!r}")
    rng = np.random.default_rng(seed)
    rows = _centre_block(height, centre)
    if kind == "lines":
        target = max(1, int(round(height / acceleration)))
        calib = rows.stop - rows.start
        if calib > target:
            raise InputError(_too_few(acceleration, target, calib, "ky rows", centre))
        keep = np.zeros(height, dtype=bool)
        keep[rows] = True
        keep[rng.choice(np.flatnonzero(~keep), size=target - calib, replace=False)] = True
        return np.broadcast_to(keep[None, :], (depth, height)).copy()
    n = depth * height
    target = max(1, int(round(n / acceleration)))
    start = np.zeros((depth, height), dtype=bool)
    start[_centre_block(depth, centre), rows] = True
    calib = int(start.sum())
    if calib > target:
        raise InputError(_too_few(acceleration, target, calib, "phase encodes", centre))
    kz = (np.arange(depth) - depth // 2) / max(depth / 2, 1)
    ky = (np.arange(height) - height // 2) / max(height / 2, 1)
    rho = np.sqrt(kz[:, None] ** 2 + ky[None, :] ** 2) / math.sqrt(2.0)
    profile = 1.0 + VD_SLOPE * rho
    order = rng.permutation(n)
    lo, best = 1.0 / (1.0 + VD_SLOPE), None  # scale lo: no two points conflict, all kept
    if target >= n:
        return np.ones((depth, height), dtype=bool)
    hi = 2 * lo
    while True:  # the first scale that keeps fewer than the target
        mask = _draw_disc(order, hi * profile, start)
        if mask.sum() < target or hi > 2 * max(depth, height):
            break
        lo, best, hi = hi, mask, 2 * hi
    for _ in range(12):
        if best is not None and best.sum() - target <= 0.02 * target:
            break
        mid = 0.5 * (lo + hi)
        mask = _draw_disc(order, mid * profile, start)
        if mask.sum() >= target:
            lo, best = mid, mask
        else:
            hi = mid
    if best is None:
        best = _draw_disc(order, lo * profile, start)
    extra = int(best.sum()) - target
    if extra > 0:
        free = np.flatnonzero(best & ~start)
        best.reshape(-1)[rng.choice(free, size=extra, replace=False)] = False
    return best


def _too_few(acceleration, target, calib, what, centre) -> str:
    return (f"acceleration {acceleration} keeps {target} {what}, fewer than the "
            f"{calib} of the fully sampled centre (center {centre:g}): lower the acceleration "
            f"or the center fraction")


class CartesianMRI3D(VolumeOperator):
    """3D Cartesian MRI of a volume: readout fully sampled, ky-kz undersampled by a 2D mask
    (variable-density Poisson disc or lines) with a fully sampled centre."""

    name = "mri-cartesian-3d"
    #: what it measures: the modality of a truth the values cannot tell (problem.load_truth)
    modality = "mri"
    is_complex = True
    initial_name = "zero-filled"
    measurement_units = ("complex 3D k-space (kz, ky, kx), orthonormal FFT (same energy as the "
                         "volume); plane d is kz = d - D // 2")
    PARAMS = (
        Param("acceleration", int, 8, "undersampling factor of the ky-kz plane (4 to 16)",
              low=1),
        Param("mask", str, "poisson", "ky-kz pattern: variable-density Poisson disc, or lines "
              "(whole ky rows)", ("poisson", "lines")),
        Param("center", float, None, "fully sampled centre: this fraction of each phase-encode "
              "axis (default: 0.08 for poisson, 0.32 / acceleration of the ky rows for lines)",
              low=0, high=1, open_low=True),
        Param("mask_seed", int, 0, "seed of the Poisson disc or of the random lines", low=0),
        Param("depth", int, None, "slices of the volume, whose k-space couples them all "
              "(default: set from the volume)", low=1),
    )

    def _setup(self):
        if self.params["center"] is None:
            self.params["center"] = (POISSON_CENTRE if self.params["mask"] == "poisson"
                                     else 0.32 / self.params["acceleration"])
        self._masks: dict[int, torch.Tensor] = {}
        self._sym: dict[int, torch.Tensor] = {}
        if self.params["depth"] is not None:
            self.mask_for(self.params["depth"])  # bad combinations fail here

    # -- the mask ---------------------------------------------------------------------------
    def mask_for(self, depth: int) -> torch.Tensor:
        """The sampling mask ``(depth, H, 1)`` (centred layout; 1 along the readout)."""
        if depth not in self._masks:
            p = self.params
            m = phase_encode_mask(int(depth), self.image_shape[0], p["acceleration"], p["mask"],
                                  float(p["center"]), p["mask_seed"])
            self._masks[depth] = torch.from_numpy(m)[:, :, None].to(self.device, self.dtype)
        return self._masks[depth]

    def _symmetric_mask(self, depth: int) -> torch.Tensor:
        """The mask in unshifted k-space averaged with its reflection ``k -> -k`` (the readout
        is fully sampled, so only kz and ky are reflected)."""
        if depth not in self._sym:
            m = torch.fft.ifftshift(self.mask_for(depth), dim=(0, 1))
            reflected = torch.roll(torch.flip(m, dims=(0, 1)), shifts=(1, 1), dims=(0, 1))
            self._sym[depth] = 0.5 * (m + reflected)
        return self._sym[depth]

    @property
    def measurement_shape(self):
        return self.image_shape

    @property
    def undersampling_factor(self) -> float:
        """``acceleration / 4``, as the 2D operator (untuned for 3D masks)."""
        return self.params["acceleration"] / 4.0

    # -- the operator -----------------------------------------------------------------------
    @staticmethod
    def _fft(v):
        return torch.fft.fftshift(torch.fft.fftn(v, dim=(-3, -2, -1), norm="ortho"),
                                  dim=(-3, -2, -1))

    @staticmethod
    def _ifft(k):
        return torch.fft.ifftn(torch.fft.ifftshift(k, dim=(-3, -2, -1)), dim=(-3, -2, -1),
                               norm="ortho")

    def forward(self, x):
        x = self.check_image(x)
        v, depth = self._volumes(x)
        return (self._fft(v.to(self.measurement_dtype)) * self.mask_for(depth)).reshape(x.shape)

    def adjoint(self, y):
        y = self.check_measurement(y)
        k, depth = self._volumes(y)
        return self._ifft(k * self.mask_for(depth)).real.reshape(y.shape)

    def normal(self, x):
        x = self.check_image(x)
        v, depth = self._volumes(x)
        k = self._fft(v.to(self.measurement_dtype)) * self.mask_for(depth)
        return self._ifft(k).real.reshape(x.shape)

    def initial(self, y):
        """Zero-filled reconstruction: magnitude of the inverse 3D FFT of the masked k-space."""
        y = self.check_measurement(y)
        k, depth = self._volumes(y)
        return self._ifft(k * self.mask_for(depth)).abs().reshape(y.shape)

    def norm(self, iterations: int = 20) -> float:
        """``||A^T A|| = 1`` exactly: ``A^T A = F^H S F`` with ``S`` in {0, 1/2, 1}, and 1 at
        the (always sampled) centre of k-space."""
        return 1.0

    def _closed_form_solve(self, z, aty, gamma):
        """For real volumes ``A^T A = F^H S F`` with ``S`` the mask made symmetric under
        ``k -> -k`` (:meth:`_symmetric_mask`), so ``(I + gamma A^T A)^-1`` is diagonal in
        k-space; ``gamma = inf``: the pseudo-inverse of ``S`` corrects the sampled frequencies
        of ``z``. Unshifted k-space throughout (the shifts cancel)."""
        vz, depth = self._volumes(z)
        va, _ = self._volumes(aty)
        s = self._symmetric_mask(depth).to(z.device)
        dims = (-3, -2, -1)
        cdt = self.measurement_dtype
        if math.isinf(gamma):
            inv = torch.where(s > 0, 1.0 / s.clamp_min(0.5), torch.zeros_like(s))
            k = torch.fft.fftn(va.to(cdt), dim=dims, norm="ortho")
            kz = torch.fft.fftn(vz.to(cdt), dim=dims, norm="ortho")
            out = vz + torch.fft.ifftn(inv * (k - s * kz), dim=dims, norm="ortho").real
        else:
            b = (vz + gamma * va).to(cdt)
            out = torch.fft.ifftn(torch.fft.fftn(b, dim=dims, norm="ortho") / (1 + gamma * s),
                                  dim=dims, norm="ortho").real
        return out.reshape(z.shape).to(z.dtype)

    def estimate_noise(self, y) -> float:
        """The noise std of each of the real and imaginary parts of the k-space, from the
        sampled entries only, the smaller of two MAD estimates, as the 2D ``mri-cartesian``
        does in 3D: the Hermitian residual ``(y(k) - conj(y(-k))) / sqrt(2)`` over pairs of
        sampled frequencies (pure noise for a real volume; beyond a quarter of the bandwidth,
        ``max(|kz|/D, |ky|/H, |kx|/W) >= 1/4``, when there are enough), and the outermost
        sampled frequencies themselves (``>= 3/8``)."""
        y = self.check_measurement(y).detach().to(torch.complex128)
        k, depth = self._volumes(y)
        n = k.shape[0]
        h, w = self.image_shape
        dev = k.device
        sampled = (self.mask_for(depth)[:, :, 0] > 0).to(dev)[:, :, None].expand(depth, h, w)

        def freq(m):
            return (torch.arange(m, device=dev) - m // 2).abs() / m

        radius = torch.maximum(torch.maximum(freq(depth)[:, None, None], freq(h)[None, :, None]),
                               freq(w)[None, None, :])
        # the index of -k in the centred layout: 2 (m // 2) - i, modulo m
        iz, iy, ix = ((2 * (m // 2) - torch.arange(m, device=dev)) % m for m in (depth, h, w))

        def mirror(t):
            return t[..., iz, :, :][..., :, iy, :][..., :, :, ix]

        lin = torch.arange(depth * h * w, device=dev).reshape(depth, h, w)
        pairs = sampled & mirror(sampled) & (lin < mirror(lin))
        del lin
        estimates = []
        outer = pairs & (radius >= 0.25)
        use = outer if int(outer.sum()) * n >= MIN_NOISE_SAMPLES else pairs
        if int(use.sum()):
            residual = (k - mirror(k).conj()) / math.sqrt(2.0)
            estimates.append(robust_std(residual[:, use]))
        corner = sampled & (radius >= 0.375)
        if int(corner.sum()) * n < MIN_NOISE_SAMPLES:
            corner = sampled & (radius >= 0.25)
        if int(corner.sum()):
            estimates.append(robust_std(k[:, corner]))
        return min(estimates) if estimates else 0.0
