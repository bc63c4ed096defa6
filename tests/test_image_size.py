"""Priors on images of any size: the coordinate map for another canvas, the tiling of non-square
and odd-size images, and the shipped priors denoising / reconstructing 512 x 512, 300 x 200,
217 x 181 and 64 x 64 images (see the "Other image sizes" section of priors/patches.py)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_patchdiff.conventions import hu_to_unit, normalise, unit_to_hu
from napari_patchdiff.io.samples import load_sample
from napari_patchdiff.priors import (PatchPrior, WholeImagePrior, assembled_denoise,
                                     averaged_denoise, coordinate_grid, load_prior,
                                     shipped_priors, stitched_denoise, tiling_origins)
from napari_patchdiff.priors.patches import (COORDINATE_MAPPING, axis_coordinates,
                                             canvas_coordinates)
from napari_patchdiff.recon.metrics import psnr

SIZES = [(512, 512), (300, 200), (217, 181), (64, 64)]


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(min(n, 2))
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------ the coordinate map

def test_map_is_the_training_map_at_the_training_size():
    for h, w, pad in [(256, 256, 24), (37, 50, 4), (9, 8, 0)]:
        got = canvas_coordinates(h, w, pad, (h, w), rows=h + 2 * pad + 7, cols=w + 2 * pad + 3)
        want = coordinate_grid(h + 2 * pad, w + 2 * pad, rows=h + 2 * pad + 7,
                               cols=w + 2 * pad + 3)
        assert torch.equal(got, want)  # bit for bit
        assert torch.equal(canvas_coordinates(h, w, pad), coordinate_grid(h + 2 * pad,
                                                                           w + 2 * pad))


@pytest.mark.parametrize("n", [512, 300, 217, 181, 64, 8])
def test_map_keeps_centre_edges_and_pad(n):
    pad, n0 = 24, 256
    t = axis_coordinates(n, pad, n0)
    train = axis_coordinates(n0, pad)
    assert t.shape == (n + 2 * pad,)
    assert t[0] == -1 and t[-1] == pytest.approx(1, abs=1e-12)  # canvas edges stay the edges
    # first / last image pixel: the first / last training image pixel
    assert t[pad] == train[pad] and t[pad + n - 1] == pytest.approx(float(train[pad + n0 - 1]))
    # the pad strips keep their training coordinates (the band the network saw as zeros)
    torch.testing.assert_close(t[:pad], train[:pad])
    torch.testing.assert_close(t[pad + n:], train[pad + n0:])
    # symmetric about the centre; increasing; the centre at 0
    torch.testing.assert_close(t, -t.flip(0))
    assert (t.diff() > 0).all()
    if n % 2:
        assert t[pad + n // 2] == pytest.approx(0, abs=1e-12)
    # beyond the canvas the pad's step continues
    ext = axis_coordinates(n, pad, n0, length=n + 2 * pad + 10)
    assert ext[-1] == pytest.approx(1 + 10 * 2 / (n0 + 2 * pad - 1))


def test_coordinates_of_a_patch_at_a_relative_position():
    """A patch whose top-left image pixel sits at relative position (1/4, 1/2) of a 301 x 201
    image gets the coordinates of the point at (1/4, 1/2) of the training image."""
    h, w, pad, p, n0 = 301, 201, 24, 56, 256
    grid = canvas_coordinates(h, w, pad, (n0, n0), dtype=torch.float64)
    r, c = 75, 100  # (h - 1) / 4, (w - 1) / 2
    patch = grid[0, :, pad + r:pad + r + p, pad + c:pad + c + p]
    y0 = 2 * (pad + 0.25 * (n0 - 1)) / (n0 + 2 * pad - 1) - 1
    x0 = 2 * (pad + 0.5 * (n0 - 1)) / (n0 + 2 * pad - 1) - 1
    assert float(patch[1, 0, 0]) == pytest.approx(y0) and float(patch[0, 0, 0]) == \
        pytest.approx(x0, abs=1e-12)
    assert x0 == pytest.approx(0.0, abs=1e-12)  # the middle column is the centre
    # one image pixel is (n0 - 1) / (n - 1) training pixels, per axis
    step = 2 / (n0 + 2 * pad - 1)
    torch.testing.assert_close(patch[1, 1:, 0] - patch[1, :-1, 0],
                               torch.full((p - 1,), step * (n0 - 1) / (h - 1),
                                          dtype=torch.float64))
    torch.testing.assert_close(patch[0, 0, 1:] - patch[0, 0, :-1],
                               torch.full((p - 1,), step * (n0 - 1) / (w - 1),
                                          dtype=torch.float64))
    assert COORDINATE_MAPPING["name"] == "fov-relative-v1"


@pytest.mark.parametrize("h,w", SIZES + [(8, 8), (57, 9), (255, 257)])
def test_random_shift_tiling_covers_every_pixel_once(h, w):
    p, pad = 56, 24
    for a, b in [(0, 0), (23, 23), (7, 16), (16, 3), (11, 0)]:
        rows, cols = tiling_origins(h, w, p, pad, (a, b))
        cover = np.zeros((max(rows[-1] + p, h + 2 * pad), max(cols[-1] + p, w + 2 * pad)), int)
        for r in rows:
            for c in cols:
                cover[r:r + p, c:c + p] += 1
        assert (cover <= 1).all()
        assert (cover[pad:pad + h, pad:pad + w] == 1).all()


def _analytic(x, sigma, coords):
    f = (1.0 / (1.0 + sigma ** 2)).reshape(-1, 1, 1, 1)
    cx, cy = coords[:, :1], coords[:, 1:]
    return x * f + 0.3 * cx - 0.2 * cy + 0.1 * cx * cy


class _Analytic(torch.nn.Module):
    def __init__(self, multiple=1):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))
        self.net = SimpleNamespace(multiple=multiple)
        self.shapes = []

    def forward(self, x, sigma, coords):
        self.shapes.append(tuple(x.shape[-2:]))
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1).expand(x.shape[0])
        return _analytic(x, s, coords.expand(x.shape[0], -1, -1, -1))


@pytest.mark.parametrize("h,w", [(61, 45), (20, 33), (32, 32)])
def test_every_mode_feeds_the_mapped_coordinates(h, w):
    """With a position-aware pointwise 'denoiser', every pixel's output shows the coordinate it
    was given: the mapped one of its image position, whatever the tiling."""
    pad, p, trained = 8, 16, (32, 32)
    x = torch.rand(2, 1, h, w, dtype=torch.float64)
    sigma = torch.tensor([0.1, 2.0], dtype=torch.float64)
    coords = canvas_coordinates(h, w, pad, trained, dtype=torch.float64)[:, :, pad:pad + h,
                                                                         pad:pad + w]
    want = _analytic(x, sigma, coords.expand(2, -1, -1, -1))
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        got = assembled_denoise(_analytic, x, sigma, p, pad, generator=g, max_batch=7,
                                trained_size=trained)
        torch.testing.assert_close(got, want)
    for fn in (averaged_denoise, stitched_denoise):
        torch.testing.assert_close(fn(_analytic, x, sigma, p, pad, trained_size=trained), want)
    meta = {"image_size": list(trained)}
    for mode in ("assembled", "average", "stitch"):
        prior = PatchPrior(_Analytic(), patch_size=p, pad=pad, mode=mode, metadata=meta)
        torch.testing.assert_close(prior.denoise(x.float(), sigma.float()), want.float())
    # the whole-image prior: the canvas is extended to the network's multiple, then cropped
    net = _Analytic(multiple=4)
    whole = WholeImagePrior(net, pad=pad, metadata=meta)
    torch.testing.assert_close(whole.denoise(x.float(), sigma.float()), want.float())
    assert all(s % 4 == 0 for s in net.shapes[-1])


# ------------------------------------------------------------------------ the shipped priors

needs_ct = pytest.mark.skipif("ct" not in shipped_priors(), reason="no shipped CT prior")


def _ct_images():
    """Real-looking CT images of each size from held-out sample slice 8 (lung2 slice 53)."""
    x = torch.from_numpy(hu_to_unit(load_sample("ct")[0][[8]]).astype(np.float32))[:, None]
    up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False).clamp(0, 1)
    return {(512, 512): up, (300, 200): up[..., 106:406, 156:356],
            (217, 181): x[..., 20:237, 38:219], (64, 64): x[..., 96:160, 96:160]}


def _gain(prior, x, sigma=0.1):
    y = x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        d = prior.denoise(y, sigma, generator=torch.Generator().manual_seed(1))
    assert d.shape == x.shape and torch.isfinite(d).all()
    return psnr(d.numpy(), x.numpy()) - psnr(y.numpy(), x.numpy())


# PSNR gains (dB) of one call at sigma 0.1, measured on this slice with the patch prior `ct`
# (the whole-image `ct-whole`): 512 x 512 14.3 (15.8), 300 x 200 13.2 (13.0), 217 x 181 10.9
# (12.7), 64 x 64 5.8 (8.1); the 256 x 256 slice itself gains about 13.6
GAIN = {(512, 512): 8.0, (300, 200): 8.0, (217, 181): 6.0, (64, 64): 3.0}


@needs_ct
def test_shipped_ct_prior_denoises_any_size():
    prior = load_prior("ct")
    for size, x in _ct_images().items():
        assert tuple(x.shape[-2:]) == size
        info = prior.check(size, "ct")
        assert info["coordinates"] == "fov-relative-v1" and info["trained_image_size"] == \
            [256, 256]
        assert _gain(prior, x) > GAIN[size], size


@pytest.mark.skipif("ct-whole" not in shipped_priors(), reason="no shipped whole-image prior")
def test_shipped_whole_image_prior_denoises_any_size():
    prior = load_prior("ct-whole")
    images = _ct_images()
    for size in [(512, 512), (217, 181), (64, 64)]:
        prior.check(size, "ct")
        assert _gain(prior, images[size]) > GAIN[size], size


@pytest.mark.skipif("mri" not in shipped_priors(), reason="no shipped MRI prior")
def test_shipped_mri_prior_denoises_a_217_x_181_brain():
    prior = load_prior("mri")
    vol, _ = normalise(load_sample("mri")[0], "mri")
    x = torch.from_numpy(np.ascontiguousarray(vol[[11], 20:237, 38:219]))[:, None].float()
    prior.check((217, 181), "mri")
    assert _gain(prior, x) > 4.0


@needs_ct
def test_dds_runs_on_a_512_ct_and_a_217_x_181_mri_problem():
    from napari_patchdiff import api
    from napari_patchdiff.recon.problem import simulate, truth_from_array
    from napari_patchdiff.solvers.diffusion import dds

    up = _ct_images()[(512, 512)][0, 0].numpy()
    truth = truth_from_array(unit_to_hu(up), modality="ct")
    problem = simulate(truth, "ct-parallel", 0.5, seed=0, views=20)
    prior = load_prior("ct")
    prior.check(problem.op.image_shape, "ct")
    events = list(dds(problem.op, problem.y, noise_std=0.5, prior=prior, nfe=3))
    x = events[-1].estimate
    assert x.shape == (1, 1, 512, 512) and torch.isfinite(x).all() and prior.nfe == 3
    assert psnr(x.clamp(0, 1).numpy(), problem.truth_batch.numpy()) > 20

    if "mri" not in shipped_priors():
        return
    raw = load_sample("mri")[0][11, 20:237, 38:219]
    brain = truth_from_array(np.ascontiguousarray(raw), modality="mri")
    mri = simulate(brain, "mri-cartesian", 0.005, seed=0, acceleration=4)
    result = api.solve(mri, "dds", prior="mri", nfe=3)  # checks the prior against the problem
    assert result.recon.shape == (217, 181) and np.isfinite(result.recon).all()
    assert result.report["psnr"] > 15  # 3 evaluations: a smoke test, not a tuned run
