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
checkpoint). The map depends only on the canvas size, which is therefore part of a prior's
convention (image size and pad must match those used in training).

Grid past the canvas
--------------------
The random-shift tiling of :func:`assembled_denoise` starts at canvas pixel ``(a, b)``,
``0 <= a, b < pad``, and uses ``k = ceil((pad + H - a) / P)`` rows of patches (likewise for
columns): the smallest count that reaches the last field-of-view row. When ``a + k P`` exceeds
``Hc`` the canvas is extended at the bottom/right with further zeros, and those extra pixels get
coordinates from the *same* affine map (so ``x, y > 1`` there). Every pixel thus keeps the
coordinate it had in training; only pixels outside the trained canvas (which are zero, outside the
field of view and discarded) carry extrapolated coordinates. For the paper's set-up (256 image,
P = 56, pad = 24) the grid always fits: k = 5 and ``a + 280 <= 304``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "COORDINATE_NORMALISATION", "pad_image", "coordinate_grid", "random_patches",
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


def _extended_canvas(x: torch.Tensor, pad: int, rows_needed: int, cols_needed: int):
    """Zero-padded canvas, further extended at the bottom/right to ``rows/cols_needed``."""
    h, w = x.shape[-2:]
    hc, wc = h + 2 * pad, w + 2 * pad
    er, ec = max(0, rows_needed - hc), max(0, cols_needed - wc)
    canvas = F.pad(x, (pad, pad + ec, pad, pad + er))
    coords = coordinate_grid(hc, wc, device=x.device, dtype=x.dtype, rows=hc + er, cols=wc + ec)
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
                      shift: tuple[int, int] | None = None) -> torch.Tensor:
    """PaDIS whole-image denoiser from a patch denoiser, with one random grid shift.

    Parameters
    ----------
    denoiser : callable ``(patches (N,1,P,P), sigma (N,), coords (N,2,P,P)) -> (N,1,P,P)``.
    x : (B, 1, H, W) noisy images.
    sigma : float or (B,) noise levels.
    generator : draws the shift ``(a, b)`` in ``[0, pad)^2`` (ignored if ``shift`` is given).
    max_batch : at most this many patches per denoiser call (None: all at once).

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
    canvas, coords = _extended_canvas(x, pad, a + kh * p, c + kw * p)
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


def _grid_patches(x, pad, p, rows, cols):
    canvas, coords = _extended_canvas(x, pad, rows[-1] + p, cols[-1] + p)
    origins = [(r, c) for r in rows for c in cols]
    patches = torch.stack([canvas[:, :, r:r + p, c:c + p] for r, c in origins], dim=1)
    cpatch = torch.cat([coords[:, :, r:r + p, c:c + p] for r, c in origins], dim=0)
    return canvas.shape[-2:], origins, patches, cpatch


def _fixed_grid_denoise(denoiser, x, sigma, patch_size, pad, overlap, max_batch, average: bool):
    b, _, h, w = x.shape
    p = int(patch_size)
    rows, cols = overlapping_origins(h, w, p, pad, overlap)
    (hc, wc), origins, patches, cpatch = _grid_patches(x, pad, p, rows, cols)
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
                     overlap: int = 8, max_batch: int | None = 64) -> torch.Tensor:
    """"Patch averaging" ablation: fixed overlapping grid (:func:`overlapping_origins`), the
    denoised patches averaged where they overlap (deterministic: no random shift)."""
    return _fixed_grid_denoise(denoiser, x, sigma, patch_size, pad, overlap, max_batch, True)


def stitched_denoise(denoiser, x: torch.Tensor, sigma, patch_size: int = 56, pad: int = 24,
                     overlap: int = 8, max_batch: int | None = 64) -> torch.Tensor:
    """"Patch stitching" ablation: the same grid as :func:`averaged_denoise`, later patches
    (row-major order) overwrite earlier ones (deterministic)."""
    return _fixed_grid_denoise(denoiser, x, sigma, patch_size, pad, overlap, max_batch, False)
