"""Seeded additive Gaussian measurement noise.

Scale: ``std`` is the standard deviation in the measurement's own units (see each operator's
``measurement_units``): line integrals for CT, orthonormal k-space for MRI (each of the real and
imaginary parts gets ``std``), image units (normalised [0, 1] scale) for the image-domain
operators. The same seed gives the same noise on any device.
"""
from __future__ import annotations

import torch

from ..errors import InputError


def add_noise(y: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    """Return ``y + std * n`` with ``n`` standard Gaussian drawn from a CPU generator seeded ``seed``."""
    if std < 0 or not torch.isfinite(torch.tensor(float(std))):
        raise InputError(f"noise std must be a finite number >= 0, got {std}")
    if std == 0:
        return y.clone()
    g = torch.Generator().manual_seed(int(seed))
    real_dtype = torch.float64 if y.dtype in (torch.float64, torch.complex128) else torch.float32
    if y.is_complex():
        n = torch.randn((*y.shape, 2), generator=g, dtype=real_dtype)
        n = torch.complex(n[..., 0], n[..., 1])
    else:
        n = torch.randn(y.shape, generator=g, dtype=real_dtype)
    return y + std * n.to(y.device)
