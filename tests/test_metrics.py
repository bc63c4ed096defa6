import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from napari_patchdiff.errors import InputError
from napari_patchdiff.recon.metrics import per_slice_psnr, per_slice_ssim, psnr, ssim


def _sk_ssim(a, b, data_range=1.0):
    return structural_similarity(a, b, data_range=data_range, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False)


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    ref = np.zeros((3, 48, 40))
    ref[:, 10:30, 8:25] = 0.7
    ref += 0.2 * rng.random(ref.shape)
    x = np.clip(ref + 0.05 * rng.standard_normal(ref.shape), 0, 1)
    return x, ref


def test_ssim_matches_skimage_per_slice(pair):
    x, ref = pair
    expected = [_sk_ssim(x[i], ref[i]) for i in range(3)]
    assert per_slice_ssim(x, ref) == pytest.approx(expected, abs=1e-10)
    assert ssim(x[0], ref[0]) == pytest.approx(expected[0], abs=1e-10)
    assert ssim(x, ref) == pytest.approx(np.mean(expected), abs=1e-10)
    # torch (B, 1, H, W) float32 input, on the project's scale
    xt = torch.from_numpy(x).float()[:, None]
    rt = torch.from_numpy(ref).float()[:, None]
    assert ssim(xt, rt) == pytest.approx(np.mean(expected), abs=1e-4)
    assert isinstance(ssim(xt, rt), float)


def test_ssim_data_range_and_identity(pair):
    x, ref = pair
    assert ssim(2 * x[1], 2 * ref[1], data_range=2.0) == pytest.approx(
        _sk_ssim(2 * x[1], 2 * ref[1], data_range=2.0), abs=1e-10)
    assert ssim(ref, ref) == pytest.approx(1.0, abs=1e-12)


def test_psnr_matches_skimage(pair):
    x, ref = pair
    assert psnr(x, ref) == pytest.approx(peak_signal_noise_ratio(ref, x, data_range=1.0),
                                         abs=1e-9)
    assert per_slice_psnr(x, ref) == pytest.approx(
        [peak_signal_noise_ratio(ref[i], x[i], data_range=1.0) for i in range(3)], abs=1e-9)
    assert psnr(torch.from_numpy(x), torch.from_numpy(ref), data_range=2.0) == pytest.approx(
        peak_signal_noise_ratio(ref, x, data_range=2.0), abs=1e-9)
    assert math.isinf(psnr(ref, ref))


def test_metric_input_errors(pair):
    x, ref = pair
    with pytest.raises(InputError, match="same shape"):
        psnr(x[0], ref)
    with pytest.raises(InputError, match="volume"):
        ssim(x[None, None], ref[None, None])
    with pytest.raises(InputError, match="real"):
        psnr(torch.ones(4, 4, dtype=torch.complex64), torch.ones(4, 4))
    with pytest.raises(InputError, match="at least 11"):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)))
    with pytest.raises(InputError, match="data_range"):
        psnr(x, ref, data_range=0)
