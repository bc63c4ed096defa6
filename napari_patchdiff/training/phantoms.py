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

With ``textured=True`` three in four images are instead :func:`textured_body` images, closer to
what a CT slice holds: a body with a smooth low-frequency intensity field and sometimes a darker
fat rim; 3-20 inner ellipses, each with its own random-field texture (correlation 0.6-4 pixels);
0-5 bright bone rims; in 7 of 10 images one or two dark lungs holding smooth random vessel curves
(0.6-1.6 pixels wide) and 5-60 vessel cross-sections; then a random blur (partial volume, up to
1.2 pixels) and fine grain. Nothing in them comes from a scan. A prior trained on them gained
about 1-2 dB on real lung CT over one trained on the plain images (docs/adaptation.md).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as nd

__all__ = ["random_ellipses", "textured_body", "phantom_slices"]


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


def _field(rng, shape, corr, std):
    """A Gaussian random field of correlation length ``corr`` pixels and standard deviation
    ``std``."""
    f = nd.gaussian_filter(rng.standard_normal(shape).astype(np.float32), corr, mode="wrap")
    return f * (std / max(float(f.std()), 1e-8))


def _curves(rng, shape, mask, n, width):
    """``n`` random smooth curves inside ``mask`` drawn ``width`` pixels wide, peak 1."""
    h, w = shape
    acc = np.zeros(shape, np.float32)
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return acc
    for _ in range(n):
        k = rng.integers(len(ys))
        y, x = float(ys[k]), float(xs[k])
        ang = rng.uniform(0, 2 * np.pi)
        turn = rng.uniform(0.02, 0.25)
        length = int(rng.integers(8, 90))
        amp = rng.uniform(0.5, 1.0)
        for _ in range(length):
            ang += rng.normal(0, turn)
            y, x = y + np.sin(ang), x + np.cos(ang)
            iy, ix = int(round(y)), int(round(x))
            if not (0 <= iy < h and 0 <= ix < w) or not mask[iy, ix]:
                break
            acc[iy, ix] = max(acc[iy, ix], amp)
    line = nd.gaussian_filter(acc, width)
    return line / max(float(line.max()), 1e-6)


def textured_body(rng: np.random.Generator, shape=(256, 256)) -> np.ndarray:
    """One textured synthetic body on the normalised scale, float32 of ``shape`` (module
    docstring)."""
    h, w = shape
    yy, xx = np.mgrid[-1:1:h * 1j, -1:1:w * 1j]
    body = _ellipse(yy, xx, rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05),
                    rng.uniform(0.55, 0.92), rng.uniform(0.6, 0.95), rng.uniform(0, np.pi))
    img = np.where(body, rng.uniform(0.44, 0.54), 0.0).astype(np.float32)
    img += body * _field(rng, shape, rng.uniform(8, 30), rng.uniform(0.0, 0.025))
    # fat rim
    if rng.random() < 0.5:
        inner = nd.binary_erosion(body, iterations=int(rng.integers(3, 15)))
        img -= (body & ~inner) * rng.uniform(0.02, 0.06)
    for _ in range(int(rng.integers(3, 20))):
        size = rng.uniform(0.03, 0.4)
        mask = _ellipse(yy, xx, rng.uniform(-0.7, 0.7), rng.uniform(-0.7, 0.7),
                        size * rng.uniform(0.3, 1.0), size * rng.uniform(0.3, 1.0),
                        rng.uniform(0, np.pi)) & body
        tex = _field(rng, shape, rng.uniform(0.6, 4.0), rng.uniform(0.0, 0.03))
        img += mask * (rng.uniform(-0.45, 0.4) + tex)
    # cortical bone: bright rings
    for _ in range(int(rng.integers(0, 6))):
        size = rng.uniform(0.04, 0.2)
        cy, cx, a = rng.uniform(-0.7, 0.7), rng.uniform(-0.7, 0.7), rng.uniform(0, np.pi)
        ay, ax = size * rng.uniform(0.4, 1.0), size * rng.uniform(0.4, 1.0)
        t = rng.uniform(0.008, 0.03)
        ring = (_ellipse(yy, xx, cy, cx, ay + t, ax + t, a) & ~_ellipse(yy, xx, cy, cx, ay, ax, a)
                & body)
        img = np.where(ring, rng.uniform(0.6, 0.9), img)
    # lungs with vessel trees
    if rng.random() < 0.7:
        for side in (-1, 1)[: int(rng.integers(1, 3))]:
            ay, ax = rng.uniform(0.25, 0.55), rng.uniform(0.15, 0.35)
            lung = _ellipse(yy, xx, rng.uniform(-0.3, 0.2), side * rng.uniform(0.2, 0.45),
                            ay, ax, rng.uniform(-0.4, 0.4)) & body
            lung = lung & nd.binary_erosion(body, iterations=6)
            level = rng.uniform(0.005, 0.1)  # drawn before the texture (the shipped prior's data)
            parenchyma = _field(rng, shape, rng.uniform(0.6, 3), rng.uniform(0.002, 0.015))
            img = np.where(lung, level + parenchyma, img)
            for width in (0.6, 1.0, 1.6):
                v = _curves(rng, shape, lung, int(rng.integers(1, 8)), width)
                img += lung * v * rng.uniform(0.15, 0.45)
            dots = np.zeros(shape, np.float32)
            ys, xs = np.nonzero(lung)
            if len(ys):
                k = rng.integers(len(ys), size=int(rng.integers(5, 60)))
                dots[ys[k], xs[k]] = rng.uniform(0.3, 1.0, size=len(k))
                dots = nd.gaussian_filter(dots, rng.uniform(0.6, 1.5))
                dots /= max(float(dots.max()), 1e-6)
                img += lung * dots * rng.uniform(0.2, 0.45)
    img = nd.gaussian_filter(img, rng.uniform(0.0, 1.2))
    img += body * _field(rng, shape, 0.5, rng.uniform(0.0, 0.01))
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


def phantom_slices(count: int, shape=(256, 256), seed: int = 0,
                   textured: bool = False) -> np.ndarray:
    """``count`` synthetic images ``(count, H, W)`` (see the module docstring); ``textured``:
    three of every four are :func:`textured_body` images, the rest as without it."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, *shape), dtype=np.float32)
    for i in range(count):
        if textured and i % 4 != 3:
            out[i] = textured_body(rng, shape)
        else:
            out[i] = _odl_phantom(rng, shape) if i % 8 == 7 else random_ellipses(rng, shape)
    return out
