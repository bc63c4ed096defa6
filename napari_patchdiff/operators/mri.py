"""Single-coil Cartesian MRI: ``y = M F x`` with the orthonormal 2D FFT and a line mask.

k-space is centred (``fftshift``); sampled lines are rows of k-space (phase encodes along the
first image axis). Measurements are complex ``(B, 1, H, W)`` with zeros where not sampled.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import InputError
from ..params import Param
from .base import MIN_NOISE_SAMPLES, Operator, robust_std

#: fully sampled centre fraction per acceleration (the fastMRI convention)
CENTRE_FRACTION = {4: 0.08, 8: 0.04}


def line_mask(n: int, acceleration: int, kind: str, seed: int = 0) -> np.ndarray:
    """Boolean mask over ``n`` phase-encode lines: a fully sampled centre plus ``kind`` lines.

    ``kind`` is "equispaced" or "random"; about ``n / acceleration`` lines are kept in total.
    """
    if acceleration < 1:
        raise InputError(f"acceleration must be >= 1, got {acceleration}")
    centre = max(2, int(round(n * CENTRE_FRACTION.get(acceleration, 0.32 / acceleration))))
    mask = np.zeros(n, dtype=bool)
    lo = (n - centre) // 2
    mask[lo : lo + centre] = True
    n_more = max(0, int(round(n / acceleration)) - centre)
    free = np.flatnonzero(~mask)
    if kind == "equispaced":
        picks = free[np.round(np.linspace(0, len(free) - 1, n_more)).astype(int)] if n_more else []
    elif kind == "random":
        picks = np.random.default_rng(seed).choice(free, size=n_more, replace=False)
    else:
        raise InputError(f"mask must be 'equispaced' or 'random', got {kind!r}")
    mask[picks] = True
    return mask


class CartesianMRI(Operator):
    """Single-coil Cartesian MRI with an equispaced or random line mask and a sampled centre."""

    name = "mri-cartesian"
    #: what it measures: the modality of a truth the values cannot tell (problem.load_truth)
    modality = "mri"
    is_complex = True
    initial_name = "zero-filled"
    measurement_units = "complex k-space, orthonormal FFT (same energy as the image)"
    PARAMS = (
        Param("acceleration", int, 4, "undersampling factor (4 or 8)"),
        Param("mask", str, "equispaced", "line pattern", ("equispaced", "random")),
        Param("mask_seed", int, 0, "seed of the random line mask"),
    )

    def _setup(self):
        rows = line_mask(self.image_shape[0], self.params["acceleration"], self.params["mask"],
                         self.params["mask_seed"])
        m = torch.from_numpy(rows)[:, None].expand(self.image_shape)
        self.mask = m.to(device=self.device, dtype=self.dtype).contiguous()

    @property
    def measurement_shape(self):
        return self.image_shape

    @property
    def undersampling_factor(self) -> float:
        """``acceleration / 4``: the best TV weight grew like the acceleration on the validation
        slices (reference 4x)."""
        return self.params["acceleration"] / 4.0

    def _fft(self, x):
        return torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))

    def _ifft(self, k):
        return torch.fft.ifft2(torch.fft.ifftshift(k, dim=(-2, -1)), norm="ortho")

    def forward(self, x):
        x = self.check_image(x)
        return self._fft(x.to(self.measurement_dtype)) * self.mask

    def adjoint(self, y):
        y = self.check_measurement(y)
        return self._ifft(y * self.mask).real

    def normal(self, x):
        x = self.check_image(x)
        return self._ifft(self._fft(x.to(self.measurement_dtype)) * self.mask).real

    def _closed_form_solve(self, z, aty, gamma):
        """For real images ``A^T A = F^H S F`` with ``S = (M + M_reflected) / 2`` the line mask
        made symmetric under ``k -> -k`` (a real image's spectrum is conjugate-symmetric), so
        ``(I + gamma A^T A)^-1`` is diagonal in k-space; ``gamma = inf``: the pseudo-inverse of
        ``S`` corrects the sampled frequencies of ``z``."""
        s = self._symmetric_mask()
        if math.isinf(gamma):
            inv = torch.where(s > 0, 1.0 / s.clamp_min(0.5), torch.zeros_like(s))
            k = torch.fft.fft2(aty.to(self.measurement_dtype), norm="ortho")
            kz = torch.fft.fft2(z.to(self.measurement_dtype), norm="ortho")
            return z + torch.fft.ifft2(inv * (k - s * kz), norm="ortho").real
        b = (z + gamma * aty).to(self.measurement_dtype)
        return torch.fft.ifft2(torch.fft.fft2(b, norm="ortho") / (1 + gamma * s), norm="ortho").real

    def _symmetric_mask(self) -> torch.Tensor:
        """The mask in unshifted k-space, averaged with its reflection ``k -> -k``."""
        if getattr(self, "_sym", None) is None:
            m = torch.fft.ifftshift(self.mask, dim=(-2, -1))
            reflected = torch.roll(torch.flip(m, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
            self._sym = 0.5 * (m + reflected)
        return self._sym

    def estimate_noise(self, y) -> float:
        """The noise std of each of the real and imaginary parts of the k-space, from the
        sampled entries only (unsampled ones are not measured), the smaller of two MAD
        estimates:

        * the Hermitian residual ``(y(k) - conj(y(-k))) / sqrt(2)`` over pairs of sampled
          frequencies ``k, -k`` (one per pair; ``k = -k`` left out): the spectrum of the real
          image this operator models is conjugate-symmetric, so the residual is pure noise of
          the same std, whatever the image (its own noise floor included). Only frequencies
          beyond a quarter of the bandwidth (``max(|ky|/H, |kx|/W) >= 1/4``) are used when there
          are enough of them, so that the smooth phase of a real scanner's complex image (not
          modelled here) barely leaks in;
        * the outermost sampled frequencies themselves (``max(|ky|/H, |kx|/W) >= 3/8``), mostly
          noise (what remains of the image there leaks in: on the sample brain slices about
          0.002-0.005 without any added noise), for masks with no mirrored lines.
        """
        y = self.check_measurement(y).detach().to(torch.complex128)
        h, w = self.image_shape
        dev = y.device
        sampled = self.mask.to(dev) > 0
        fy = (torch.arange(h, device=dev) - h // 2).abs() / h
        fx = (torch.arange(w, device=dev) - w // 2).abs() / w
        radius = torch.maximum(fy[:, None], fx[None, :])
        # the index of -k in the centred (fftshift) layout: 2 (n // 2) - i, modulo n
        ii = (2 * (h // 2) - torch.arange(h, device=dev)) % h
        jj = (2 * (w // 2) - torch.arange(w, device=dev)) % w
        lin = torch.arange(h * w, device=dev).reshape(h, w)
        pairs = sampled & sampled[ii][:, jj] & (lin < lin[ii][:, jj])
        estimates = []
        outer = pairs & (radius >= 0.25)
        use = outer if int(outer.sum()) * y.shape[0] >= MIN_NOISE_SAMPLES else pairs
        if int(use.sum()):
            mirrored = y[..., ii, :][..., :, jj].conj()
            estimates.append(robust_std(((y - mirrored) / math.sqrt(2.0))[..., use]))
        corner = sampled & (radius >= 0.375)
        if int(corner.sum()) * y.shape[0] < MIN_NOISE_SAMPLES:
            corner = sampled & (radius >= 0.25)
        if int(corner.sum()):
            estimates.append(robust_std(y[..., corner]))
        return min(estimates) if estimates else 0.0

    def initial(self, y):
        """Zero-filled reconstruction: magnitude of the inverse FFT of the masked k-space."""
        y = self.check_measurement(y)
        return self._ifft(y * self.mask).abs()
