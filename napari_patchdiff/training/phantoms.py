"""Synthetic training images for users with no training data: random-ellipse "bodies" and ODL's
phantoms, on the CT normalised scale (air 0, water 0.5, dense bone 1).

A patch prior trained on these alone knows edges, flat regions and smooth intensity changes but
no anatomy; test-time adaptation (:mod:`napari_patchdiff.recon.adapt`) fits it to the data at hand
(Hu, Song, Fessler, Shen, IEEE T-CI 2025 adapt an ellipse-trained patch prior to real CT).

Each random-ellipse image is a soft-tissue body (one large ellipse of intensity 0.45-0.55,
zero outside) holding 4-30 smaller ellipses whose intensity offsets (-0.5 to +0.45: air-filled
lungs and cavities to bone) add up; every 8th image is instead ODL's modified Shepp-Logan or
FORBILD head phantom, randomly rotated by a multiple of 90 degrees, flipped and scaled to a body
intensity of about 0.5. The same seed gives the same images.
"""
from __future__ import annotations

import numpy as np

__all__ = ["random_ellipses", "phantom_slices"]


def _ellipse(yy, xx, cy, cx, ay, ax, angle):
    c, s = np.cos(angle), np.sin(angle)
    u = ((xx - cx) * c + (yy - cy) * s) / ax
    v = (-(xx - cx) * s + (yy - cy) * c) / ay
    return (u * u + v * v) <= 1.0


def random_ellipses(rng: np.random.Generator, shape=(256, 256)) -> np.ndarray:
    """One random-ellipse body on the normalised scale, float32 of ``shape``."""
    h, w = shape
    yy, xx = np.mgrid[-1:1:h * 1j, -1:1:w * 1j]
    body = _ellipse(yy, xx, rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05),
                    rng.uniform(0.55, 0.92), rng.uniform(0.6, 0.95), rng.uniform(0, np.pi))
    img = np.where(body, rng.uniform(0.45, 0.55), 0.0)
    for _ in range(int(rng.integers(4, 31))):
        size = rng.uniform(0.02, 0.45)
        mask = _ellipse(yy, xx, rng.uniform(-0.7, 0.7), rng.uniform(-0.7, 0.7),
                        size * rng.uniform(0.3, 1.0), size * rng.uniform(0.3, 1.0),
                        rng.uniform(0, np.pi))
        img = img + np.where(mask & body, rng.uniform(-0.5, 0.45), 0.0)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _odl_phantom(rng: np.random.Generator, shape) -> np.ndarray:
    import odl

    space = odl.uniform_discr([-1, -1], [1, 1], shape, dtype="float32")
    if rng.random() < 0.5:
        img = np.asarray(odl.phantom.shepp_logan(space, modified=True).asarray())
    else:
        img = np.asarray(odl.phantom.forbild(space).asarray())
    img = img / max(float(np.median(img[img > 0])) if (img > 0).any() else 1.0, 1e-6) * 0.5
    img = np.rot90(img, int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        img = img[:, ::-1]
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def phantom_slices(count: int, shape=(256, 256), seed: int = 0) -> np.ndarray:
    """``count`` synthetic images ``(count, H, W)`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, *shape), dtype=np.float32)
    for i in range(count):
        out[i] = _odl_phantom(rng, shape) if i % 8 == 7 else random_ellipses(rng, shape)
    return out
