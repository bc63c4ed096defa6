"""Patch geometry of the PaDIS prior: padding, coordinates, random patches, tilings.

All functions are pure (no module state); randomness comes only from the ``generator`` argument.

Canvas and coordinates
----------------------
An image of ``H x W`` pixels is zero-padded by ``pad`` pixels on every side into the *canvas* of
``Hc x Wc = (H + 2 pad) x (W + 2 pad)`` pixels. Pixel ``(i, j)`` of the canvas (0-based row
``i``, column ``j``; the image pixel ``(r, c)`` is canvas pixel ``(r + pad, c + pad)``) gets

    x = 2 j / (Wc - 1) - 1        (channel 0, the column coordinate)
    y = 2 i / (Hc - 1) - 1        (channel 1, the row coordinate)

so the canvas corners are exactly -1 and +1 (:data:`COORDINATE_NORMALISATION`, recorded in every
checkpoint). This is the map of training (:func:`coordinate_grid`): a prior sees it on images of
its training size ``H0 x W0`` (the checkpoint's ``image_size``).

Other image sizes
-----------------
The network is fully convolutional; only the coordinate channels tie it to the training canvas.
An image of another size ``H x W`` (smaller, larger, non-square, odd) gets the coordinates of the
*relative position in the field of view* (:data:`COORDINATE_MAPPING`, ``fov-relative-v1``,
:func:`canvas_coordinates`), each axis on its own. Along the rows (columns likewise), canvas
pixel ``i`` is first mapped to a position ``t`` on the training canvas,

    image rows  (pad <= i < pad + H):  t = pad + (i - pad) (H0 - 1) / (H - 1)
    top pad     (i < pad):             t = i
    bottom pad and beyond:             t = i + H0 - H

and then gets ``y = 2 t / (H0 + 2 pad - 1) - 1`` as in training. So the first and last image
rows get exactly the coordinates of the first and last training image rows, the centre stays the
centre, the pad strip keeps its training coordinates (the canvas edges stay at -1 and +1) and
pixels beyond the canvas continue the pad strip's map. For an image of the training size the map
*is* the training map (bit for bit), so nothing changes there.

Why relative, not absolute pixel offsets from the centre at the training scale (clipped to
[-1, 1]): (1) an image of another size is more often the same anatomy at another matrix size (a
512 x 512 CT, a 217 x 181 brain at 1 mm, a binned slice) than a crop, and relative positions
then point at the same anatomy; (2) in training, coordinates beyond the first/last image rows
were *always* zero padding, and this map keeps that band exactly on the pad: absolute offsets
put the outer 128 rows on each side of a 512-pixel image past the last training image row (on
pad coordinates, or clipped), and mapping the whole new canvas onto [-1, 1] would put its image
rows up to y = 0.914, past the last training image row at 0.842, where the network only ever
saw zeros; (3) measured with the shipped priors (one denoiser
call on held-out slices, mean PSNR gain; relative vs absolute): ``ct`` at sigma 0.1: 512 x 512
(2 x upsampled) 14.2 vs 13.9 dB, 128 x 128 (2 x 2 binned) 8.8 vs 8.6, 64 x 64 upsampled crop
7.2 vs 7.1, 217 x 181 crop 11.4 both; at sigma 0.5: 512 x 512 21.0 vs 20.5, and a 64 x 64
*centre crop* the one case where absolute wins (13.8 vs 13.1); ``mri`` at 0.1: 512 x 512 10.4 vs
9.9, 64 x 64 centre crop 3.2 vs 2.6. The position channels matter little to these priors (tenths
of a dB), so the choice is safe either way. The price: the coordinate step per pixel differs from
training by ``(H0 - 1) / (H - 1)`` (differently per axis for a non-square image), which the
measurements above include.

Grid past the canvas
--------------------
The random-shift tiling of :func:`assembled_denoise` starts at canvas pixel ``(a, b)``,
``0 <= a, b < pad``, and uses ``k = ceil((pad + H - a) / P)`` rows of patches (likewise for
columns): the smallest count that reaches the last field-of-view row. When ``a + k P`` exceeds
``Hc`` the canvas is extended at the bottom/right with further zeros, and those extra pixels get
coordinates from the *same* map (so ``x, y > 1`` there). Every pixel thus keeps the coordinate it
has on the canvas; only pixels outside the canvas (which are zero, outside the field of view and
discarded) carry extrapolated coordinates. For the paper's set-up (256 image, P = 56, pad = 24)
the grid always fits: k = 5 and ``a + 280 <= 304``. The tiling covers every field-of-view pixel
exactly once for any ``H x W`` (non-square and odd sizes included).

Kept as one module: the patch geometry is one concept, the canvas and coordinate map above and
every function that cuts, tiles or reassembles patches on it, all pure and all bound to the
same map.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "COORDINATE_NORMALISATION", "COORDINATE_MAPPING", "pad_image", "coordinate_grid",
    "axis_coordinates", "canvas_coordinates", "random_patches",
    "MixedPatchSampler", "random_shift", "tiling_origins", "overlapping_origins",
    "assembled_denoise", "averaged_denoise", "stitched_denoise",
]

COORDINATE_NORMALISATION = {
    "name": "canvas-linear-v1",
    "channels": ["x (column)", "y (row)"],
    "formula": "x = 2*j/(Wc-1) - 1, y = 2*i/(Hc-1) - 1; (i, j) 0-based pixel of the zero-padded "
               "canvas of Hc x Wc = (H + 2 pad) x (W + 2 pad) pixels; beyond the canvas the same "
               "affine map is extrapolated",
    "range": [-1.0, 1.0],
    "concatenated_after_c_in": True,
}

#: how the coordinate channels of an image of another size than the training images are made
#: (see "Other image sizes" above); recorded by ``Prior.check``
COORDINATE_MAPPING = {
    "name": "fov-relative-v1",
    "formula": "each axis separately: canvas pixel i of an image of n pixels (padded by pad) is "
               "placed at t on the training canvas of a n0-pixel image: t = pad + (i - pad) * "
               "(n0 - 1) / (n - 1) inside the image, t = i in the leading pad, t = i + n0 - n "
               "in the trailing pad and beyond; then 2 t / (n0 + 2 pad - 1) - 1 as in training "
               "(canvas-linear-v1). The identity for n = n0.",
    "trained_on": "canvas-linear-v1",
}


def pad_image(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Zero-pad the last two dimensions by ``pad`` pixels on every side."""
    pad = int(pad)
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    return F.pad(x, (pad, pad, pad, pad)) if pad else x


def coordinate_grid(canvas_h: int, canvas_w: int, device=None, dtype=torch.float32,
                    rows: int | None = None, cols: int | None = None) -> torch.Tensor:
    """Coordinate channels ``(1, 2, rows, cols)`` for a canvas of ``canvas_h x canvas_w``.

    ``rows``/``cols`` (default: the canvas size) may exceed the canvas; the affine map of
    :data:`COORDINATE_NORMALISATION` is then extrapolated.
    """
    rows = canvas_h if rows is None else int(rows)
    cols = canvas_w if cols is None else int(cols)
    i = torch.arange(rows, device=device, dtype=torch.float64)
    j = torch.arange(cols, device=device, dtype=torch.float64)
    y = 2.0 * i / max(canvas_h - 1, 1) - 1.0
    x = 2.0 * j / max(canvas_w - 1, 1) - 1.0
    grid = torch.stack([x[None, :].expand(rows, cols), y[:, None].expand(rows, cols)])
    return grid[None].to(dtype)


def axis_coordinates(n: int, pad: int, trained: int | None = None, length: int | None = None,
                     device=None) -> torch.Tensor:
    """Coordinates (float64, ``(length,)``) of canvas positions ``0 .. length - 1`` along one
    axis of an ``n``-pixel image padded by ``pad``, for a prior trained on ``trained``-pixel
    images (default ``n``: the training map itself) with the same pad: the
    ``fov-relative-v1`` map of :data:`COORDINATE_MAPPING`. ``length`` defaults to the canvas,
    ``n + 2 pad``; positions past it continue the trailing pad's map."""
    n, pad = int(n), int(pad)
    trained = n if trained is None else int(trained)
    length = n + 2 * pad if length is None else int(length)
    i = torch.arange(length, device=device, dtype=torch.float64)
    if trained != n:
        r = i - pad
        inside = pad + r * ((trained - 1) / max(n - 1, 1))
        i = torch.where(r < 0, i, torch.where(r > n - 1, i + (trained - n), inside))
    return 2.0 * i / max(trained + 2 * pad - 1, 1) - 1.0


def canvas_coordinates(height: int, width: int, pad: int, trained=None, device=None,
                       dtype=torch.float32, rows: int | None = None,
                       cols: int | None = None) -> torch.Tensor:
    """Coordinate channels ``(1, 2, rows, cols)`` of the canvas of a ``height x width`` image
    padded by ``pad``, for a prior trained on ``trained = (H0, W0)`` images (None: this image's
    own size, i.e. :func:`coordinate_grid` of its canvas, bit for bit). ``rows``/``cols``
    (default: the canvas) may exceed the canvas (the map is continued there)."""
    th, tw = (height, width) if trained is None else (int(trained[0]), int(trained[1]))
    y = axis_coordinates(height, pad, th, rows, device)
    x = axis_coordinates(width, pad, tw, cols, device)
    grid = torch.stack([x[None, :].expand(len(y), len(x)), y[:, None].expand(len(y), len(x))])
    return grid[None].to(dtype)


def random_patches(images: torch.Tensor, patch_size: int, pad: int,
                   generator: torch.Generator | None = None, index: torch.Tensor | None = None):
    """One random ``patch_size`` patch per sample from the zero-padded images.

    Parameters
    ----------
    images : (N, 1, H, W) images.
    index : optional (M,) indices into ``images`` (with repetition) to cut M patches; default
        one patch per image.
    generator : CPU generator for the locations (uniform over all positions where the patch lies
        inside the padded canvas).

    Returns ``(patches (M, 1, P, P), coords (M, 2, P, P), origins (M, 2))``; ``origins`` are the
    canvas (row, col) of each patch's top-left pixel.
    """
    p = int(patch_size)
    canvas = pad_image(images, pad)
    hc, wc = canvas.shape[-2:]
    if p > hc or p > wc:
        raise ValueError(f"patch size {p} exceeds the padded canvas {hc}x{wc}")
    if index is None:
        index = torch.arange(images.shape[0])
    m = index.numel()
    r0 = torch.randint(0, hc - p + 1, (m,), generator=generator)
    c0 = torch.randint(0, wc - p + 1, (m,), generator=generator)
    ar = torch.arange(p)
    rows = (r0[:, None] + ar)  # (M, P)
    cols = (c0[:, None] + ar)
    dev = images.device
    idx = index.to(dev)[:, None, None]
    patches = canvas[:, 0][idx, rows.to(dev)[:, :, None], cols.to(dev)[:, None, :]][:, None]
    grid = coordinate_grid(hc, wc, device=dev, dtype=images.dtype)[0]
    coords = grid[:, rows.to(dev)[:, :, None], cols.to(dev)[:, None, :]].permute(1, 0, 2, 3)
    return patches, coords, torch.stack([r0, c0], dim=1)


@dataclass
class MixedPatchSampler:
    """Draws the patch size of each training step and its batch size.

    ``patch_sizes`` are drawn with ``probs``; the batch for size P is
    ``batch * (max(patch_sizes) / P) ** 2`` (rounded), so every step sees the same number of
    pixels and smaller patches come in proportionally larger batches (PaDIS: 16/32/64 with
    probabilities 0.2/0.3/0.5). With ``batch=8``: 8 x 64^2, 32 x 32^2 or 128 x 16^2.
    """

    patch_sizes: tuple = (16, 32, 64)
    probs: tuple = (0.2, 0.3, 0.5)
    batch: int = 8

    def __post_init__(self):
        self.patch_sizes = tuple(int(p) for p in self.patch_sizes)
        self.probs = tuple(float(q) for q in self.probs)
        if len(self.patch_sizes) != len(self.probs) or not self.patch_sizes:
            raise ValueError("patch_sizes and probs must have the same non-zero length")
        if min(self.probs) < 0 or abs(sum(self.probs) - 1.0) > 1e-6:
            raise ValueError(f"patch size probabilities must be >= 0 and sum to 1, got {self.probs}")
        if min(self.patch_sizes) < 1 or self.batch < 1:
            raise ValueError("patch sizes and batch must be positive")

    @property
    def multipliers(self) -> dict[int, int]:
        pmax = max(self.patch_sizes)
        return {p: max(1, round((pmax / p) ** 2)) for p in self.patch_sizes}

    def batch_size(self, patch_size: int) -> int:
        return self.batch * self.multipliers[int(patch_size)]

    def draw(self, generator: torch.Generator | None = None) -> tuple[int, int]:
        """``(patch_size, batch_size)`` for one step."""
        k = int(torch.multinomial(torch.tensor(self.probs, dtype=torch.float64), 1,
                                  generator=generator))
        p = self.patch_sizes[k]
        return p, self.batch_size(p)


# ----------------------------------------------------------------------------------------------
# tilings

def random_shift(pad: int, generator: torch.Generator | None = None) -> tuple[int, int]:
    """The random grid shift ``(a, b)``, uniform in ``[0, pad)^2`` (``(0, 0)`` when pad is 0)."""
    if pad <= 0:
        return 0, 0
    a, b = torch.randint(0, int(pad), (2,), generator=generator).tolist()
    return int(a), int(b)


def _axis_origins(n: int, p: int, pad: int, shift: int) -> list[int]:
    if not 0 <= shift < max(pad, 1):
        raise ValueError(f"shift {shift} outside [0, {max(pad, 1)})")
    k = math.ceil((pad + n - shift) / p)
    return [shift + i * p for i in range(k)]


def tiling_origins(height: int, width: int, patch_size: int, pad: int,
                   shift: tuple[int, int]) -> tuple[list[int], list[int]]:
    """Row and column origins (canvas coordinates) of the non-overlapping random-shift grid.

    The grid starts at canvas pixel ``shift = (a, b)`` and has the fewest patches that reach the
    last field-of-view pixel; the patch with row origin ``r`` covers canvas rows ``[r, r + P)``.
    Field-of-view pixel ``(i, j)`` is canvas pixel ``(i + pad, j + pad)``.
    """
    return (_axis_origins(height, patch_size, pad, shift[0]),
            _axis_origins(width, patch_size, pad, shift[1]))


def _overlap_axis(n: int, p: int, pad: int, overlap: int) -> list[int]:
    c = n + 2 * pad
    if p >= c:
        return [0]
    stride = p - overlap
    if stride < 1:
        raise ValueError(f"overlap {overlap} must be smaller than the patch size {p}")
    out = list(range(0, c - p + 1, stride))
    if out[-1] != c - p:
        out.append(c - p)
    return out


def overlapping_origins(height: int, width: int, patch_size: int, pad: int,
                        overlap: int = 8) -> tuple[list[int], list[int]]:
    """Origins of the fixed overlapping grid of the averaging/stitching ablations.

    Patches step by ``P - overlap`` from canvas pixel 0; the last one is aligned with the canvas
    end, so the canvas (and the field of view) is covered, some pixels several times. If P
    exceeds the canvas a single patch at 0 is used (and the canvas is extended with zeros).
    """
    return (_overlap_axis(height, patch_size, pad, overlap),
            _overlap_axis(width, patch_size, pad, overlap))


def _as_sigma(sigma, b: int, device, dtype) -> torch.Tensor:
    s = torch.as_tensor(sigma, device=device, dtype=dtype).reshape(-1)
    if s.numel() == 1:
        return s.expand(b)
    if s.numel() != b:
        raise ValueError(f"sigma has {s.numel()} values for a batch of {b}")
    return s


def _extended_canvas(x: torch.Tensor, pad: int, rows_needed: int, cols_needed: int,
                     trained=None):
    """Zero-padded canvas, further extended at the bottom/right to ``rows/cols_needed``, and
    its coordinates for a prior trained on ``trained`` (H0, W0) images (None: ``x``'s size)."""
    h, w = x.shape[-2:]
    hc, wc = h + 2 * pad, w + 2 * pad
    er, ec = max(0, rows_needed - hc), max(0, cols_needed - wc)
    canvas = F.pad(x, (pad, pad + ec, pad, pad + er))
    coords = canvas_coordinates(h, w, pad, trained, device=x.device, dtype=x.dtype,
                                rows=hc + er, cols=wc + ec)
    return canvas, coords


def _denoise_patches(denoiser, patches, sigma_p, coords, max_batch):
    n = patches.shape[0]
    max_batch = max(1, int(max_batch or n))
    outs = []
    for s in range(0, n, max_batch):
        e = min(n, s + max_batch)
        outs.append(denoiser(patches[s:e], sigma_p[s:e], coords[s:e]))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)


def assembled_denoise(denoiser, x: torch.Tensor, sigma, patch_size: int = 56, pad: int = 24,
                      generator: torch.Generator | None = None, max_batch: int | None = 64,
                      shift: tuple[int, int] | None = None, trained_size=None) -> torch.Tensor:
    """PaDIS whole-image denoiser from a patch denoiser, with one random grid shift.

    Parameters
    ----------
    denoiser : callable ``(patches (N,1,P,P), sigma (N,), coords (N,2,P,P)) -> (N,1,P,P)``.
    x : (B, 1, H, W) noisy images.
    sigma : float or (B,) noise levels.
    generator : draws the shift ``(a, b)`` in ``[0, pad)^2`` (ignored if ``shift`` is given).
    max_batch : at most this many patches per denoiser call (None: all at once).
    trained_size : (H0, W0) of the prior's training images; the coordinate channels of an image
        of another size follow :data:`COORDINATE_MAPPING` (None: the image's own canvas).

    The padded canvas is tiled by :func:`tiling_origins`; all ``B * k_h * k_w`` patches are
    denoised in batches, put back, and the field of view is cropped out (so everything outside it
    is dropped, i.e. zero on the canvas). Returns (B, 1, H, W). Differentiable with respect to
    ``x``.
    """
    b, _, h, w = x.shape
    p = int(patch_size)
    a, c = random_shift(pad, generator) if shift is None else (int(shift[0]), int(shift[1]))
    rows, cols = tiling_origins(h, w, p, pad, (a, c))
    kh, kw = len(rows), len(cols)
    canvas, coords = _extended_canvas(x, pad, a + kh * p, c + kw * p, trained_size)
    region = canvas[:, :, a:a + kh * p, c:c + kw * p]
    patches = region.reshape(b, 1, kh, p, kw, p).permute(0, 2, 4, 1, 3, 5).reshape(-1, 1, p, p)
    creg = coords[:, :, a:a + kh * p, c:c + kw * p]
    cpatch = creg.reshape(1, 2, kh, p, kw, p).permute(0, 2, 4, 1, 3, 5).reshape(-1, 2, p, p)
    cpatch = cpatch.repeat(b, 1, 1, 1)
    sig = _as_sigma(sigma, b, x.device, x.dtype).repeat_interleave(kh * kw)
    out = _denoise_patches(denoiser, patches, sig, cpatch, max_batch).to(x.dtype)
    out = out.reshape(b, kh, kw, 1, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, 1, kh * p, kw * p)
    # canvas row pad + i sits at region row pad + i - a
    return out[:, :, pad - a:pad - a + h, pad - c:pad - c + w]


def _grid_patches(x, pad, p, rows, cols, trained=None):
    canvas, coords = _extended_canvas(x, pad, rows[-1] + p, cols[-1] + p, trained)
    origins = [(r, c) for r in rows for c in cols]
    patches = torch.stack([canvas[:, :, r:r + p, c:c + p] for r, c in origins], dim=1)
    cpatch = torch.cat([coords[:, :, r:r + p, c:c + p] for r, c in origins], dim=0)
    return canvas.shape[-2:], origins, patches, cpatch


def _fixed_grid_denoise(denoiser, x, sigma, patch_size, pad, overlap, max_batch, average: bool,
                        trained=None):
    b, _, h, w = x.shape
    p = int(patch_size)
    rows, cols = overlapping_origins(h, w, p, pad, overlap)
    (hc, wc), origins, patches, cpatch = _grid_patches(x, pad, p, rows, cols, trained)
    n = len(origins)
    sig = _as_sigma(sigma, b, x.device, x.dtype).repeat_interleave(n)
    out = _denoise_patches(denoiser, patches.reshape(-1, 1, p, p), sig, cpatch.repeat(b, 1, 1, 1),
                           max_batch).to(x.dtype).reshape(b, n, 1, p, p)
    acc = x.new_zeros(b, 1, hc, wc)
    if average:
        cnt = x.new_zeros(1, 1, hc, wc)
        for k, (r, c) in enumerate(origins):
            acc[:, :, r:r + p, c:c + p] += out[:, k]
            cnt[:, :, r:r + p, c:c + p] += 1
        acc = acc / cnt.clamp_min(1)
    else:
        for k, (r, c) in enumerate(origins):
            acc[:, :, r:r + p, c:c + p] = out[:, k]
    return acc[:, :, pad:pad + h, pad:pad + w]


def averaged_denoise(denoiser, x: torch.Tensor, sigma, patch_size: int = 56, pad: int = 24,
                     overlap: int = 8, max_batch: int | None = 64,
                     trained_size=None) -> torch.Tensor:
    """"Patch averaging" ablation: fixed overlapping grid (:func:`overlapping_origins`), the
    denoised patches averaged where they overlap (deterministic: no random shift);
    ``trained_size`` as in :func:`assembled_denoise`."""
    return _fixed_grid_denoise(denoiser, x, sigma, patch_size, pad, overlap, max_batch, True,
                               trained_size)


def stitched_denoise(denoiser, x: torch.Tensor, sigma, patch_size: int = 56, pad: int = 24,
                     overlap: int = 8, max_batch: int | None = 64,
                     trained_size=None) -> torch.Tensor:
    """"Patch stitching" ablation: the same grid as :func:`averaged_denoise`, later patches
    (row-major order) overwrite earlier ones (deterministic)."""
    return _fixed_grid_denoise(denoiser, x, sigma, patch_size, pad, overlap, max_batch, False,
                               trained_size)
