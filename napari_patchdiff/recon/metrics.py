"""Image-quality metrics: PSNR and SSIM on torch tensors or numpy arrays.

Inputs may be an image ``(H, W)``, a volume ``(D, H, W)`` or a batch ``(B, 1, H, W)``; ``x`` and
``ref`` must have the same shape. Everything is computed in float64 on the inputs' device and
returned as Python floats; the means sum in a fixed order
(:func:`~napari_patchdiff.operators.linalg.fixed_sum`), so a report's metrics have the same bits
on any number of threads.

* :func:`psnr` is ``10 log10(data_range^2 / MSE)`` with the MSE over all voxels (for a volume this
  is the volume PSNR, not the mean of slice PSNRs; see :func:`per_slice_psnr`).
* :func:`ssim` is the mean over 2D slices of the Gaussian-window SSIM of Wang et al. (2004),
  equal per slice to ``skimage.metrics.structural_similarity(a, b, data_range=...,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``: an 11-tap Gaussian (sigma 1.5,
  radius ``int(3.5 sigma + 0.5)``), K1 = 0.01, K2 = 0.03, population (co)variances, and the SSIM map
  averaged after cropping a border of ``(win_size - 1) // 2`` pixels. Because the crop equals the
  filter radius, the cropped map never touches the image padding, so a "valid" convolution gives
  exactly skimage's cropped map.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..operators.linalg import fixed_sum

__all__ = ["psnr", "ssim", "per_slice_psnr", "per_slice_ssim"]


def _as_batch64(a, name: str) -> torch.Tensor:
    """Convert to a float64 tensor of shape (B, 1, H, W)."""
    if isinstance(a, np.ndarray):
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)
                or a.dtype == bool):
            raise InputError(f"{name} must be a real array, got dtype {a.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))
    elif isinstance(a, torch.Tensor):
        if a.is_complex():
            raise InputError(f"{name} must be real, got {a.dtype}; take .abs() first")
        t = a.detach().to(torch.float64)
    else:
        raise InputError(f"{name} must be a torch.Tensor or a numpy array, got {type(a).__name__}")
    if t.ndim == 2:
        t = t[None, None]
    elif t.ndim == 3:
        t = t[:, None]
    elif not (t.ndim == 4 and t.shape[1] == 1):
        raise InputError(
            f"{name} must be an image (H, W), a volume (D, H, W) or a batch (B, 1, H, W), "
            f"got shape {tuple(t.shape)}"
        )
    return t


def _pair(x, ref) -> tuple[torch.Tensor, torch.Tensor]:
    a = _as_batch64(x, "x")
    b = _as_batch64(ref, "ref")
    if a.shape != b.shape:
        raise InputError(f"x and ref must have the same shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if a.device != b.device:
        b = b.to(a.device)
    return a, b


def _check_range(data_range: float) -> float:
    data_range = float(data_range)
    if not data_range > 0 or not math.isfinite(data_range):
        raise InputError(f"data_range must be a positive number, got {data_range}")
    return data_range


def _psnr_from_mse(mse: float, data_range: float) -> float:
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def psnr(x, ref, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all voxels (``inf`` when ``x == ref``)."""
    data_range = _check_range(data_range)
    a, b = _pair(x, ref)
    return _psnr_from_mse(float(fixed_sum((a - b) ** 2)) / a.numel(), data_range)


def per_slice_psnr(x, ref, data_range: float = 1.0) -> list[float]:
    """PSNR of each 2D slice (one value for an image, ``D`` or ``B`` values otherwise)."""
    data_range = _check_range(data_range)
    a, b = _pair(x, ref)
    mse = fixed_sum((a - b) ** 2, per_item=True) / a[0].numel()
    return [_psnr_from_mse(float(m), data_range) for m in mse]


def _gaussian_window(sigma: float, truncate: float, device) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    r = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    g = torch.exp(-0.5 * (r / sigma) ** 2)
    return g / g.sum()


def _filter_valid(t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of (N, C, H, W), keeping only fully-supported ("valid") pixels."""
    k = g.numel()
    c = t.shape[1]
    t = F.conv2d(t, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
    return F.conv2d(t, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)


def per_slice_ssim(x, ref, data_range: float = 1.0, sigma: float = 1.5, K1: float = 0.01,
                   K2: float = 0.03) -> list[float]:
    """SSIM of each 2D slice (Gaussian window, population covariance; see the module docstring)."""
    data_range = _check_range(data_range)
    a, b = _pair(x, ref)
    g = _gaussian_window(sigma, 3.5, a.device)
    if min(a.shape[-2:]) < g.numel():
        raise InputError(f"SSIM needs slices of at least {g.numel()} x {g.numel()} pixels, got "
                         f"{tuple(a.shape[-2:])}")
    stats = _filter_valid(torch.cat([a, b, a * a, b * b, a * b], dim=1), g)
    ux, uy, uxx, uyy, uxy = stats.unbind(dim=1)
    vx = uxx - ux * ux
    vy = uyy - uy * uy
    vxy = uxy - ux * uy
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return [float(v) for v in fixed_sum(s, per_item=True) / s[0].numel()]


def ssim(x, ref, data_range: float = 1.0) -> float:
    """Structural similarity, averaged over the 2D slices of an image, volume or batch."""
    values = per_slice_ssim(x, ref, data_range)
    return float(np.mean(values))
