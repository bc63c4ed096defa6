"""Tests of the priors subpackage and of training (tiny network, seconds each)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_patchdiff.errors import InputError
from napari_patchdiff.events import CancelToken, Cancelled
from napari_patchdiff.priors import (CONFIGS, EDMDenoiser, MixedPatchSampler, PatchPrior,
                                     WholeImagePrior, assembled_denoise, averaged_denoise,
                                     build_unet, check_compatible, coordinate_grid,
                                     count_parameters, load_checkpoint, load_prior,
                                     overlapping_origins, pad_image, random_patches,
                                     read_metadata, save_checkpoint, stitched_denoise,
                                     tiling_origins)
from napari_patchdiff.priors import prior as prior_mod
from napari_patchdiff.training import (DATA_DIR, TrainConfig, TrainEvent, TrainingVolume,
                                       load_training_slices, split_slices, train)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _squares(n=6, size=32):
    vol = np.zeros((n, size, size), np.float32)
    for i in range(n):
        a = 6 + i % 3
        vol[i, a:size - a, a:size - a] = 0.4 + 0.1 * (i % 4)
    return vol


TINY_TRAIN = dict(network="tiny", patch_sizes=(16, 32), patch_probs=(0.5, 0.5), batch=4, pad=8,
                  inference_patch_size=16, lr=1e-3, val_fraction=0.2, val_patches=8)


# ------------------------------------------------------------------------------- network

def test_parameter_counts():
    counts = {k: count_parameters(build_unet(k)) for k in CONFIGS}
    assert counts["tiny"] == 44_065 and counts["tiny"] < 100_000
    assert counts["cpu"] == 3_719_649 and 3e6 <= counts["cpu"] <= 5e6
    assert counts["gpu"] == 24_757_953 and counts["gpu"] > counts["cpu"]


@pytest.mark.parametrize("size", [16, 32, 56, 64, 50])
def test_unet_sizes(size):
    den = EDMDenoiser(build_unet("tiny"))
    x = torch.rand(2, 1, size, size + 4)
    coords = coordinate_grid(size, size + 4)
    out = den(x, torch.tensor([0.1, 1.0]), coords)
    assert out.shape == x.shape and torch.isfinite(out).all()


class _Recorder(torch.nn.Module):
    """A stand-in network F that records its input and returns a constant 1."""

    def __init__(self):
        super().__init__()
        self.config = {"in_channels": 3, "out_channels": 1}
        self.conv_in = torch.nn.Conv2d(1, 1, 1)  # only its dtype is used

    def forward(self, inp, c_noise):
        self.inp, self.c_noise = inp, c_noise
        return torch.ones_like(inp[:, :1])


def test_edm_preconditioning():
    net = _Recorder()
    den = EDMDenoiser(net, sigma_data=0.5)
    x = torch.rand(2, 1, 8, 8)
    coords = coordinate_grid(8, 8)
    sigma = torch.tensor([0.2, 3.0])
    out = den(x, sigma, coords)
    s = sigma.reshape(-1, 1, 1, 1)
    c_in = 1 / torch.sqrt(s ** 2 + 0.25)
    c_skip = 0.25 / (s ** 2 + 0.25)
    c_out = s * 0.5 / torch.sqrt(s ** 2 + 0.25)
    torch.testing.assert_close(net.inp[:, :1], c_in * x)
    torch.testing.assert_close(net.inp[:, 1:], coords.expand(2, -1, -1, -1))  # not scaled
    torch.testing.assert_close(net.c_noise, torch.log(sigma) / 4)
    torch.testing.assert_close(out, c_skip * x + c_out)


def test_untrained_denoiser_is_c_skip():
    den = EDMDenoiser(build_unet("tiny"))
    with torch.no_grad():
        den.net.conv_out.weight.zero_()
    x = torch.rand(1, 1, 16, 16)
    torch.testing.assert_close(den(x, 0.5, coordinate_grid(16, 16)), x * 0.25 / 0.5)


@pytest.fixture(params=[1, 2], ids=["1 thread", "2 threads"])
def threads(request):
    """torch's thread count for one test (restored after it)."""
    n = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(n)


@pytest.fixture(params=[True, False], ids=["fused", "torch ops"])
def fused(request, monkeypatch):
    """bfloat16 and float32 on the CPU through the numba kernel (when numba imports) or
    PyTorch's ops."""
    from napari_patchdiff.priors import network

    monkeypatch.setattr(network, "FUSED_DTYPES",
                        (torch.bfloat16, torch.float32) if request.param else ())
    return request.param


@pytest.mark.parametrize("channels,size,film", [(32, 56, False), (64, 28, True), (128, 14, True),
                                                 (8, 1, False)])
def test_channels_last_norm_act_is_groupnorm_film_silu(channels, size, film, threads, fused):
    """The channels-last fast path of the residual blocks' GroupNorm (+ FiLM) + SiLU gives what
    PyTorch's own layers give: in float64 to rounding, in float32 to its rounding, and in
    bfloat16 within bfloat16's; the result keeps the channels-last layout. On one thread the
    sums run in chunks of samples (a batch of 3 at 32 x 56 x 56 is three), on two over the
    whole batch; bfloat16 both through the fused kernel and through PyTorch's ops."""
    from napari_patchdiff.priors.network import _groups, norm_act

    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(_groups(channels), channels)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(3, channels, size, size) * 2.0 + 1.5  # a mean to cancel against
    scale = torch.randn(3, channels, 1, 1) if film else None
    shift = torch.randn(3, channels, 1, 1) if film else None

    def reference(x, norm, scale, shift):
        h = norm(x)
        return F.silu(h * (1 + scale) + shift if film else h)

    n64 = copy.deepcopy(norm).double()
    want = reference(x.double(), n64, *(None if t is None else t.double() for t in (scale, shift)))
    top = want.abs().max().item()
    for dtype, tol in ((torch.float64, 1e-12 * top), (torch.float32, 1e-5 * top),
                       (torch.bfloat16, 2e-2 * top)):
        xl = x.to(dtype).contiguous(memory_format=torch.channels_last)
        nd = copy.deepcopy(norm).to(dtype) if dtype != torch.bfloat16 else norm
        args = [None if t is None else t.to(dtype) for t in (scale, shift)]
        with torch.no_grad():
            got = norm_act(nd, xl, *args)
        assert got.dtype == dtype
        if size > 1:
            assert got.is_contiguous(memory_format=torch.channels_last)
        err = (got.double() - want).abs().max().item()
        assert err < tol, (dtype, err)


def _groupnorm_film_silu64(x, groups, weight, bias, scale, shift):
    """The exact value (float64) of ``silu(group_norm(x) * (1 + scale) + shift)``."""
    h = F.group_norm(x.double(), groups, weight.double(), bias.double(), eps=1e-5)
    if scale is not None:
        h = h * (1 + scale.double()) + shift.double()
    return F.silu(h)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "f32"])
@pytest.mark.parametrize("channels,size,film", [(32, 56, False), (96, 56, True), (64, 28, True),
                                                 (128, 14, True), (8, 3, True)])
def test_fused_kernel_rounds_the_exact_value_once(channels, size, film, dtype):
    """The numba kernel computes in float32 and rounds to the tensor's dtype once: in bfloat16
    every output is within one bfloat16 rounding (2^-8 relative, plus float32 noise) of the
    float64 value, in float32 within a few float32 roundings, over inputs whose FiLM gain pushes
    the SiLU's argument to +-100 (its exponential's range reduction at both ends)."""
    from napari_patchdiff.priors.network import _groups
    from napari_patchdiff.priors.norm_act_kernel import norm_act_cpu

    g = torch.Generator().manual_seed(3)
    n, groups = 3, _groups(channels)
    x = (torch.randn(n, channels, size, size, generator=g) * 3 + 2).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(channels, generator=g), torch.randn(channels, generator=g)
    scale = torch.randn(n, channels, 1, 1, generator=g) * 12 if film else None
    shift = torch.randn(n, channels, 1, 1, generator=g) if film else None
    want = _groupnorm_film_silu64(x, groups, weight, bias, scale, shift)
    if film:
        assert want.max() > 50 and (want.min() < -1e-20 or (want == 0).any())
    got = norm_act_cpu(x, weight, bias, groups, 1e-5, scale, shift)
    assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
    assert got.shape == x.shape
    err = (got.double() - want).abs()
    rel, floor = (2.0 ** -8, 1e-6) if dtype == torch.bfloat16 else (2e-6, 1e-5)
    assert (err <= rel * want.abs() + floor).all(), err.max().item()


def test_fused_kernel_is_thread_independent_keeps_torch_threads_and_nan():
    """The same bits on one and two threads (each sample summed in a fixed order), and torch's
    thread count is what it was (numba's OpenMP layer would have set it to numba's); a NaN
    makes the outputs of its sample's group NaN and leaves the other groups and samples alone;
    the input is not written to."""
    from napari_patchdiff.priors.norm_act_kernel import norm_act_cpu

    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 32, 20, 20, generator=g).to(torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    args = (torch.rand(32, generator=g) + 0.5, torch.randn(32, generator=g), 8, 1e-5,
            torch.randn(4, 32, 1, 1, generator=g), torch.randn(4, 32, 1, 1, generator=g))
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(norm_act_cpu(x, *args))
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0].view(torch.int16), outs[1].view(torch.int16))
    x[2, 5, 7, 3] = float("nan")
    kept = x.clone()
    out = norm_act_cpu(x, *args)
    assert torch.isnan(out[2, 4:8]).all()  # the NaN's group: channels 4-7 (8 groups of 4)
    assert torch.isfinite(out[2, :4]).all() and torch.isfinite(out[2, 8:]).all()
    assert torch.isfinite(out[[0, 1, 3]]).all()
    assert torch.equal(x.view(torch.int16), kept.view(torch.int16))
    with pytest.raises(ValueError, match="channels-last"):
        norm_act_cpu(x.contiguous(), *args)


def test_bf16_without_numba_falls_back_to_torch(monkeypatch):
    """Where numba does not import, a bfloat16 evaluation runs PyTorch's ops instead."""
    import sys

    from napari_patchdiff.priors import network

    monkeypatch.setattr(network, "_FUSED", None)
    monkeypatch.setitem(sys.modules, "napari_patchdiff.priors.norm_act_kernel", None)
    assert network._fused_kernel() is None and network._FUSED is False
    norm = torch.nn.GroupNorm(4, 16)
    x = torch.randn(2, 16, 8, 8).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = network.norm_act(norm, x)
    want = F.silu(norm(x.float()))
    assert (got.float() - want).abs().max() < 0.05


def test_fused_kernel_refuses_to_import_with_numba_jit_disabled(monkeypatch):
    """With NUMBA_DISABLE_JIT the kernel would run element by element in Python: its module
    does not import, so norm_act keeps PyTorch's path."""
    import importlib
    import sys

    import numba

    monkeypatch.setattr(numba.config, "DISABLE_JIT", True)
    monkeypatch.delitem(sys.modules, "napari_patchdiff.priors.norm_act_kernel", raising=False)
    with pytest.raises(ImportError, match="NUMBA_DISABLE_JIT"):
        importlib.import_module("napari_patchdiff.priors.norm_act_kernel")


def test_fused_bf16_denoiser_agrees_with_torch_bf16_and_float32():
    """One assembled evaluation of the shipped ``ct`` prior in bfloat16: the fused kernel and
    PyTorch's ops give the same image to bfloat16's accuracy, and both stay as close to
    float32's as each other."""
    from napari_patchdiff.priors import network

    prior = load_prior("ct")
    x = torch.rand(1, 1, 96, 96, generator=torch.Generator().manual_seed(5))
    outs = {}
    with torch.no_grad():
        for name, precision, fused in (("f32", "float32", True), ("fused", "bfloat16", True),
                                       ("torch", "bfloat16", False)):
            old = network.FUSED_DTYPES
            network.FUSED_DTYPES = (torch.bfloat16,) if fused else ()
            try:
                outs[name] = prior.with_precision(precision).denoise(
                    x, 0.3, generator=torch.Generator().manual_seed(6))
            finally:
                network.FUSED_DTYPES = old
    rms = {k: (outs[k] - outs["f32"]).square().mean().sqrt().item() for k in ("fused", "torch")}
    assert 0 < rms["fused"] < 0.01 and 0 < rms["torch"] < 0.01
    assert rms["fused"] < 1.5 * rms["torch"]
    assert not torch.equal(outs["fused"], outs["torch"])


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_upsample_conv_is_nearest_upsampling_then_conv(layout):
    """The decoder's upsampling (nearest x2, then a 3 x 3 conv) computed as one conv on the
    coarse grid: the same output and the same gradients (for training) in float64, odd and
    non-square sizes and the zero padding at the borders included."""
    from napari_patchdiff.priors.network import upsample_conv

    torch.manual_seed(2)
    conv = torch.nn.Conv2d(6, 5, 3, padding=1).double()
    x = torch.randn(2, 6, 7, 4, dtype=torch.float64).contiguous(memory_format=layout)
    x.requires_grad_(True)
    want = conv(F.interpolate(x, scale_factor=2, mode="nearest"))
    gx, gw = torch.autograd.grad(want.square().sum(), (x, conv.weight))
    got = upsample_conv(conv, x)
    assert got.is_contiguous(memory_format=layout)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    hx, hw = torch.autograd.grad(got.square().sum(), (x, conv.weight))
    torch.testing.assert_close(hx, gx, rtol=0, atol=1e-10)
    torch.testing.assert_close(hw, gw, rtol=0, atol=1e-10)


def test_channels_last_network_matches_contiguous():
    """A whole network in channels-last memory (the CPU default) computes what it computes in
    the contiguous layout (the GPU default and training's reference)."""
    torch.manual_seed(1)
    den = EDMDenoiser(build_unet("tiny")).double().eval()
    with torch.no_grad():
        den.net.conv_out.weight.normal_(std=0.1)
    x = torch.rand(4, 1, 16, 16, dtype=torch.float64)
    coords = coordinate_grid(16, 16, dtype=torch.float64)
    with torch.no_grad():
        want = den(x, 0.3, coords)
        den_cl = copy.deepcopy(den).to(memory_format=torch.channels_last)
        got = den_cl(x.contiguous(memory_format=torch.channels_last), 0.3, coords)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------- patches

def test_coordinate_grid():
    g = coordinate_grid(5, 9)
    assert g.shape == (1, 2, 5, 9)
    torch.testing.assert_close(g[0, 0, 0], torch.linspace(-1, 1, 9))  # x along columns
    torch.testing.assert_close(g[0, 1, :, 0], torch.linspace(-1, 1, 5))  # y along rows
    ext = coordinate_grid(5, 9, rows=7, cols=11)  # extrapolated affine map
    torch.testing.assert_close(ext[:, :, :5, :9], g)
    assert ext[0, 0, 0, -1] == pytest.approx(1 + 2 * 2 / 8)


def test_random_patches_match_canvas():
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(3, 1, 20, 24)
    pad, p = 4, 8
    patches, coords, origins = random_patches(imgs, p, pad, g, index=torch.tensor([0, 2, 2, 1]))
    canvas = pad_image(imgs, pad)
    grid = coordinate_grid(*canvas.shape[-2:])
    for k, n in enumerate([0, 2, 2, 1]):
        r, c = origins[k].tolist()
        torch.testing.assert_close(patches[k, 0], canvas[n, 0, r:r + p, c:c + p])
        torch.testing.assert_close(coords[k], grid[0, :, r:r + p, c:c + p])
    # locations uniform over the whole canvas: extremes reached
    big = random_patches(imgs[:1].expand(2000, -1, -1, -1), p, pad, g)[2]
    assert big[:, 0].min() == 0 and big[:, 0].max() == 28 - p
    assert big[:, 1].min() == 0 and big[:, 1].max() == 32 - p


def test_mixed_patch_sampler():
    s = MixedPatchSampler((16, 32, 64), (0.2, 0.3, 0.5), batch=8)
    assert s.multipliers == {16: 16, 32: 4, 64: 1}
    g = torch.Generator().manual_seed(1)
    draws = [s.draw(g) for _ in range(2000)]
    assert all(b * p * p == 8 * 64 * 64 for p, b in draws)
    freq = {p: sum(d[0] == p for d in draws) / 2000 for p in (16, 32, 64)}
    assert freq[16] == pytest.approx(0.2, abs=0.04) and freq[64] == pytest.approx(0.5, abs=0.04)
    with pytest.raises(ValueError):
        MixedPatchSampler((16, 32), (0.5, 0.6))


@pytest.mark.parametrize("h,w,p,pad", [(256, 256, 56, 24), (64, 48, 16, 8), (50, 37, 16, 4),
                                       (32, 32, 16, 0), (40, 40, 64, 12)])
def test_tiling_covers_fov_once(h, w, p, pad):
    shifts = [(a, b) for a in range(max(pad, 1)) for b in range(max(pad, 1))]
    for a, b in shifts[:: max(1, len(shifts) // 40)] + [shifts[-1]]:
        rows, cols = tiling_origins(h, w, p, pad, (a, b))
        cover = np.zeros((max(rows[-1] + p, h + 2 * pad), max(cols[-1] + p, w + 2 * pad)), int)
        for r in rows:
            for c in cols:
                cover[r:r + p, c:c + p] += 1
        assert (cover <= 1).all()  # non-overlapping
        assert (cover[pad:pad + h, pad:pad + w] == 1).all()  # whole field of view once
        assert rows[0] == a and cols[0] == b
    if (h, p, pad) == (256, 56, 24):  # the paper's set-up: 5 x 5 patches, never past the canvas
        for a in range(pad):
            rows, _ = tiling_origins(h, w, p, pad, (a, a))
            assert len(rows) == 5 and rows[-1] + p <= h + 2 * pad


def _analytic(x, sigma, coords):
    """A position-aware pointwise 'denoiser': x f(sigma) + g(coords)."""
    f = (1.0 / (1.0 + sigma ** 2)).reshape(-1, 1, 1, 1)
    cx, cy = coords[:, :1], coords[:, 1:]
    return x * f + 0.3 * cx - 0.2 * cy + 0.1 * cx * cy


def _expected(x, sigma, pad):
    h, w = x.shape[-2:]
    canvas = coordinate_grid(h + 2 * pad, w + 2 * pad)[:, :, pad:pad + h, pad:pad + w]
    return _analytic(x, torch.as_tensor(sigma).reshape(-1).expand(x.shape[0]),
                     canvas.expand(x.shape[0], -1, -1, -1))


@pytest.mark.parametrize("h,w,p,pad", [(256, 256, 56, 24), (50, 58, 16, 4), (40, 40, 64, 12)])
def test_assembled_denoise_matches_whole_image(h, w, p, pad):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, h, w, dtype=torch.float64)
    sigma = torch.tensor([0.1, 2.0], dtype=torch.float64)
    want = _expected(x, sigma, pad)
    for _ in range(4):  # several random shifts (including grids past the canvas)
        got = assembled_denoise(_analytic, x, sigma, p, pad, generator=g, max_batch=7)
        torch.testing.assert_close(got, want)
    for fn in (averaged_denoise, stitched_denoise):
        torch.testing.assert_close(fn(_analytic, x, sigma, p, pad, max_batch=5), want)


def test_overlapping_grid():
    rows, cols = overlapping_origins(256, 256, 56, 24, overlap=8)
    assert rows == [0, 48, 96, 144, 192, 240, 248] and cols == rows


def test_prior_interface_and_gradients():
    den = EDMDenoiser(build_unet("tiny"))
    x = torch.rand(2, 1, 32, 32)
    for mode in ("assembled", "average", "stitch"):
        pr = PatchPrior(den, patch_size=16, pad=8, mode=mode, max_batch=5)
        xg = x.clone().requires_grad_()
        out = pr.denoise(xg, torch.tensor([0.1, 0.5]), generator=torch.Generator().manual_seed(0))
        out.sum().backward()
        assert out.shape == x.shape and xg.grad is not None and pr.nfe == 1
        pr.denoise(x, 0.3)
        assert pr.nfe == 2
    whole = WholeImagePrior(den, pad=8)
    assert whole.denoise(x, 0.2).shape == x.shape and whole.nfe == 1
    assert whole.to("cpu") is whole and whole.device == torch.device("cpu")
    with pytest.raises(InputError):
        PatchPrior(den, mode="blend")
    with pytest.raises(InputError):
        whole.denoise(torch.rand(32, 32), 0.1)


class _AnalyticModule(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, sigma, coords):
        return _analytic(x, torch.as_tensor(sigma).reshape(-1).expand(x.shape[0]),
                         coords.expand(x.shape[0], -1, -1, -1))


def test_whole_image_prior_coordinates():
    x = torch.rand(2, 1, 24, 20)
    want = _expected(x, 0.4, 6)
    torch.testing.assert_close(WholeImagePrior(_AnalyticModule(), pad=6).denoise(x, 0.4), want)
    pr = PatchPrior(_AnalyticModule(), patch_size=8, pad=6)
    torch.testing.assert_close(pr.denoise(x, 0.4), want)


# ------------------------------------------------------------------------------- training

def test_training_loss_falls(tmp_path):
    events = list(train([("squares", _squares())], tmp_path / "p",
                        TrainConfig(modality="unit", steps=40, seed=0, log_every=1, val_every=0,
                                    save_every=0, **TINY_TRAIN)))
    assert all(isinstance(e, TrainEvent) for e in events)
    assert [e.step for e in events] == list(range(1, 41)) and events[-1].done
    losses = [e.loss for e in events]
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.85 * first, (first, last)
    assert events[-1].val_losses is not None and set(events[-1].val_losses) == \
        {0.02, 0.05, 0.1, 0.2, 0.5, 1.0}
    meta = read_metadata(tmp_path / "p.safetensors")
    assert meta["steps"] == 40 and meta["kind"] == "patch" and meta["pad"] == 8
    assert meta["training_data"] == [{"name": "squares", "slices": [0, 1, 3, 4, 5]}]
    assert meta["validation_data"] == [{"name": "squares", "slices": [2]}]
    assert meta["canvas_size"] == [48, 48] and meta["ema_decay"] == 0.999
    assert set(meta["final_val_loss"]) == {"0.02", "0.05", "0.1", "0.2", "0.5", "1"}


def test_whole_image_training(tmp_path):
    events = list(train([("sq", _squares(4))], tmp_path / "w",
                        TrainConfig(modality="unit", kind="whole", steps=3, network="tiny",
                                    batch=2, val_fraction=0, log_every=1)))
    assert events[-1].step == 3 and events[-1].val_losses is None
    pr = load_prior(tmp_path / "w")
    assert isinstance(pr, WholeImagePrior) and pr.pad == 0
    assert pr.denoise(torch.rand(1, 1, 32, 32), 0.5).shape == (1, 1, 32, 32)


def test_split_by_slices():
    vols = [TrainingVolume(np.zeros((23, 8, 8)), "a"), TrainingVolume(np.zeros((5, 8, 8)), "b")]
    tr, va = split_slices(vols, 0.1)
    assert va == [(0, 5), (0, 15)] and len(tr) + len(va) == 28
    assert not set(tr) & set(va)
    with pytest.raises(InputError):
        split_slices(vols, 0.7)


def test_resume_matches_uninterrupted(tmp_path):
    vol = [("squares", _squares())]
    common = dict(modality="unit", steps=12, seed=3, log_every=1, val_every=6, save_every=4,
                  **TINY_TRAIN)
    full = list(train(vol, tmp_path / "full", TrainConfig(**common)))

    token = CancelToken()
    seen = []
    with pytest.raises(Cancelled, match="step 5"):
        for ev in train(vol, tmp_path / "part", TrainConfig(**common), cancel=token):
            seen.append(ev.step)
            if ev.step == 5:
                token.cancel()
    assert seen == [1, 2, 3, 4, 5]
    with pytest.raises(InputError, match="resume=True"):
        next(train(vol, tmp_path / "part", TrainConfig(**common)))
    rest = list(train(vol, tmp_path / "part", TrainConfig(resume=True, **common)))
    assert [e.step for e in rest] == list(range(6, 13))
    assert rest[-1].loss == pytest.approx(full[-1].loss, rel=1e-5, abs=1e-7)
    a, _ = load_checkpoint(tmp_path / "full")
    b, meta_b = load_checkpoint(tmp_path / "part")
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(va, vb, rtol=1e-5, atol=1e-6, msg=k)
    assert meta_b["steps"] == 12
    # a resumed run must use the same configuration
    with pytest.raises(InputError, match="pad"):
        next(train(vol, tmp_path / "part", TrainConfig(resume=True,
                                                      **dict(common, steps=20, pad=4))))


def _nan_at(monkeypatch, bad_steps):
    """Make the training loss of the given (1-based) training steps NaN."""
    from napari_patchdiff.training import loop

    real, calls = loop.edm_loss, []

    def loss(denoiser, *args, **kw):
        out = real(denoiser, *args, **kw)
        if denoiser.training:
            calls.append(1)
            if len(calls) in bad_steps:
                return out * float("nan")
        return out

    monkeypatch.setattr(loop, "edm_loss", loss)


def test_skipped_non_finite_step_is_not_logged(tmp_path, monkeypatch):
    """Regression: a skipped step's NaN loss went into the logged mean (the event's loss NaN)."""
    vol = [("squares", _squares())]
    common = dict(modality="unit", log_every=2, val_every=0, save_every=0, **TINY_TRAIN)
    ref = list(train(vol, tmp_path / "a", TrainConfig(steps=1, **dict(common, log_every=1))))
    _nan_at(monkeypatch, {2})
    events = list(train(vol, tmp_path / "b", TrainConfig(steps=4, **common)))
    assert [e.step for e in events] == [2, 4]
    assert all(np.isfinite(e.loss) for e in events)
    assert events[0].loss == pytest.approx(ref[0].loss, rel=1e-6)  # step 1's loss alone


def test_five_non_finite_steps_in_a_row_abort(tmp_path, monkeypatch):
    from napari_patchdiff.errors import SolverError

    _nan_at(monkeypatch, {2, 3, 4, 5, 6})
    with pytest.raises(SolverError, match="step 6"):
        list(train([("squares", _squares())], tmp_path / "c",
                   TrainConfig(modality="unit", steps=8, log_every=1, val_every=0,
                               save_every=0, **TINY_TRAIN)))


class _CheckOnlyToken:
    """A cancel token with only the public check (no ``cancelled`` attribute)."""

    def __init__(self, after: int):
        self.after, self.calls = after, 0

    def check(self):
        self.calls += 1
        if self.calls > self.after:
            raise Cancelled("cancelled by the user")


def test_training_uses_the_cancel_tokens_check(tmp_path):
    """Regression: the loop read ``cancel.cancelled`` instead of calling ``cancel.check()``."""
    seen = []
    with pytest.raises(Cancelled, match=r"step 3; checkpoint saved to .*q\.safetensors"):
        for ev in train([("squares", _squares())], tmp_path / "q",
                        TrainConfig(modality="unit", steps=10, log_every=1, val_every=0,
                                    save_every=0, **TINY_TRAIN), cancel=_CheckOnlyToken(3)):
            seen.append(ev.step)
    assert seen == [1, 2, 3]
    assert read_metadata(tmp_path / "q")["steps"] == 3


def test_train_config_derives_its_defaults_once():
    c = TrainConfig()
    assert (c.patch_probs, c.batch, c.pad, c.inference_patch_size) == ((0.2, 0.3, 0.5), 8, 24, 56)
    assert c.channels_last and c.device == "cpu"
    c = TrainConfig(patch_sizes=(32, 64))
    assert c.patch_probs == (0.5, 0.5) and c.inference_patch_size == 56
    assert TrainConfig(patch_sizes=[16]).inference_patch_size == 16
    assert TrainConfig(patch_sizes=(64, 128)).inference_patch_size == 64
    w = TrainConfig(kind="whole")
    assert (w.batch, w.pad, w.inference_patch_size) == (4, 0, None)
    assert TrainConfig(batch=3, pad=5, channels_last=False).pad == 5


@pytest.mark.parametrize("kw, message", [
    (dict(kind="strips"), "kind"),
    (dict(modality="pet"), "modality"),
    (dict(network="huge"), "network configuration"),
    (dict(steps=0), "steps"),
    (dict(lr=float("nan")), "lr must be a finite number"),
    (dict(lr=-1e-4), "lr must be >= 0"),
    (dict(ema=1.0), "ema"),
    (dict(ema=0.0), "ema"),
    (dict(patch_sizes=(16, 32), patch_probs=(1.0,)), "1 patch probabilities for 2"),
    (dict(patch_probs=(0.5, 0.7, -0.2)), ">= 0"),
    (dict(patch_probs=(0.2, 0.2, 0.2)), "sum to 1"),
    (dict(patch_sizes=()), "at least one"),
    (dict(patch_sizes=(16, 16)), "distinct"),
    (dict(batch=0), "batch"),
    (dict(pad=-1), "pad"),
    (dict(val_fraction=0.5), "val_fraction"),
    (dict(steps=2.5), "integer"),
    (dict(device="gpu7"), "device"),
    (dict(init="ct", resume=True), "not both"),
])
def test_train_config_refuses_bad_options(kw, message):
    with pytest.raises(InputError, match=message) as err:
        TrainConfig(**kw)
    assert "\n" not in str(err.value)


def test_training_volumes_from_arrays_tuples_files(tmp_path):
    from napari_patchdiff import io
    from napari_patchdiff.training import training_volumes

    hu = np.full((3, 8, 12), -1024.0, np.float32)
    hu[:, 2:6, 2:10] = 0.0
    vols, modality = training_volumes([("layer", hu, {"units": "HU"})])
    assert modality == "ct" and vols[0].name == "layer" and vols[0].slices == [0, 1, 2]
    np.testing.assert_allclose(vols[0].data[0, 3, 3], 0.5)
    io.write_tiff(tmp_path / "scan.tif", hu, {"modality": "ct", "units": "HU"})
    vols, modality = training_volumes(tmp_path / "scan.tif", bin=2)
    assert modality == "ct" and vols[0].data.shape == (3, 4, 6) and vols[0].name == "scan.tif"
    mag = np.abs(np.random.default_rng(0).normal(size=(2, 8, 8))).astype(np.float32) * 500
    vols, modality = training_volumes([mag, ("b", mag, [4, 7])], modality="mri")
    assert modality == "mri" and [v.name for v in vols] == ["volume0", "b"]
    assert vols[1].slices == [4, 7] and vols[0].scale > 0 and vols[0].data.max() <= 1
    vols, modality = training_volumes([TrainingVolume(np.zeros((2, 8, 8)), "n")], "unit")
    assert modality == "unit" and vols[0].name == "n"
    with pytest.raises(InputError, match="same size"):
        training_volumes([("a", np.zeros((1, 8, 8))), ("b", np.zeros((1, 8, 6)))], "unit")
    with pytest.raises(InputError, match="NaN"):
        training_volumes([("a", np.full((1, 8, 8), np.nan))], "unit")
    with pytest.raises(InputError, match="normalise"):
        training_volumes([("a", np.full((1, 8, 8), 3.0))], "unit")
    with pytest.raises(InputError, match="modality"):
        training_volumes([TrainingVolume(np.zeros((2, 8, 8)), "n")])
    with pytest.raises(InputError, match="no training volumes"):
        training_volumes([])
    with pytest.raises(InputError, match=r"\(name, array"):
        training_volumes([(np.zeros((2, 8, 8)), "old order")], "unit")


# ------------------------------------------------------------------------------- checkpoints

def _meta(**kw):
    meta = dict(kind="patch", architecture=dict(build_unet("tiny").config), pad=8,
                image_size=[32, 32], canvas_size=[48, 48], modality="ct",
                coordinates={"name": "canvas-linear-v1"}, patch_sizes=[16, 32],
                inference_patch_size=16, intensity={"normalisation": "HU"})
    meta.update(kw)
    return meta


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    den = EDMDenoiser(build_unet("tiny"))
    meta = _meta(steps=7, training_data=[{"name": "a", "slices": [1, 2]}])
    path = save_checkpoint(tmp_path / "ck", den, meta)
    assert path.name == "ck.safetensors" and (tmp_path / "ck.json").is_file()
    den2, meta2 = load_checkpoint(tmp_path / "ck.safetensors")
    for k, v in den.state_dict().items():
        assert torch.equal(v, den2.state_dict()[k]), k
    assert {k: meta2[k] for k in meta} == json.loads(json.dumps(meta))
    assert json.loads((tmp_path / "ck.json").read_text()) == meta2
    x = torch.rand(2, 1, 16, 16)
    c = coordinate_grid(16, 16)
    with torch.no_grad():
        torch.testing.assert_close(den.eval()(x, 0.3, c), den2(x, 0.3, c), rtol=0, atol=0)
    pr = load_prior(tmp_path / "ck", mode="average")
    assert isinstance(pr, PatchPrior) and pr.patch_size == 16 and pr.pad == 8
    assert pr.metadata["modality"] == "ct"


def test_load_errors(tmp_path):
    den = EDMDenoiser(build_unet("tiny"))
    path = save_checkpoint(tmp_path / "ck", den, _meta())
    raw = path.read_bytes()
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    with pytest.raises(InputError, match="unknown prior"):
        load_prior("no-such-prior")
    # truncated
    (tmp_path / "trunc.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "trunc.safetensors")
    # garbage
    (tmp_path / "junk.safetensors").write_bytes(b"\x00\x01not a safetensors file" * 10)
    with pytest.raises(InputError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "junk.safetensors")
    # no metadata anywhere
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in den.state_dict().items()},
              str(tmp_path / "bare.safetensors"))
    with pytest.raises(InputError, match="no metadata"):
        load_checkpoint(tmp_path / "bare.safetensors")
    # invalid metadata side-car
    (tmp_path / "bare.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_checkpoint(tmp_path / "bare.safetensors")
    (tmp_path / "bare.json").write_text(json.dumps({"kind": "patch"}))
    with pytest.raises(InputError, match="lacks"):
        load_checkpoint(tmp_path / "bare.safetensors")
    # architecture mismatch (metadata says 'cpu', weights are 'tiny')
    (tmp_path / "bare.json").write_text(json.dumps(
        dict(_meta(architecture=build_unet("cpu").config), format_version=1)))
    with pytest.raises(InputError, match="do not match the architecture"):
        load_checkpoint(tmp_path / "bare.safetensors")
    with pytest.raises(InputError, match="version"):
        save_checkpoint(tmp_path / "v", den, _meta(format_version=99))


def test_check_compatible():
    meta = _meta()
    check_compatible(meta, (32, 32), "ct", pad=8, patch_size=16)
    check_compatible(meta, (3, 32, 32), "ct")
    with pytest.raises(InputError, match="trained on ct images"):
        check_compatible(meta, (32, 32), "mri")
    with pytest.raises(InputError, match="pad 8"):
        check_compatible(meta, (32, 32), "ct", pad=24)
    # any image size: the coordinate channels are mapped (patches.COORDINATE_MAPPING)
    info = check_compatible(meta, (64, 48), "ct", pad=8, patch_size=16)
    assert info == {"image_size": [64, 48], "trained_image_size": [32, 32],
                    "coordinates": "fov-relative-v1",
                    "pixel_scale": [round(31 / 63, 6), round(31 / 47, 6)]}
    assert check_compatible(meta, (32, 32), "ct")["coordinates"] == "canvas-linear-v1"
    check_compatible(meta, (1, 1), "ct", patch_size=16)  # canvas 17 >= patch 16
    with pytest.raises(InputError, match="at least"):
        check_compatible(_meta(pad=4, canvas_size=[40, 40]), (7, 40), "ct", patch_size=16)
    with pytest.raises(InputError, match="coordinate convention 'polar-v9'"):
        check_compatible(_meta(coordinates={"name": "polar-v9"}), (32, 32), "ct")
    with pytest.raises(InputError, match="patch sizes"):
        check_compatible(meta, (32, 32), "ct", patch_size=40)
    with pytest.raises(InputError, match="multiple"):
        check_compatible(meta, (32, 32), "ct", patch_size=17)
    den = EDMDenoiser(build_unet("tiny"))
    pr = PatchPrior(den, patch_size=16, pad=8, metadata=meta)
    pr.check((32, 32), "ct")
    with pytest.raises(InputError):
        pr.check((32, 32), "mri")


def test_shipped_lookup(tmp_path, monkeypatch):
    den = EDMDenoiser(build_unet("tiny"))
    save_checkpoint(tmp_path / "demo", den, _meta())
    save_checkpoint(tmp_path / "ignored.state", den, _meta())
    monkeypatch.setattr(prior_mod, "SHIPPED_DIR", tmp_path)
    assert list(prior_mod.shipped_priors()) == ["demo"]
    pr = load_prior("demo")
    assert pr.metadata["source"].endswith("demo.safetensors")


@pytest.mark.skipif(not (DATA_DIR / "lung1.tif").is_file(), reason="no development data (shared/data)")
def test_load_training_slices_ct():
    vols = load_training_slices("ct")
    assert [v.name for v in vols] == ["lung1.tif", "lung2.tif"]
    assert vols[0].data.shape == (48, 256, 256) and vols[1].slices == list(range(45))
    assert 0 <= vols[0].data.min() and vols[0].data.max() <= 1


def test_init_from_a_prior_continues_its_weights_and_records_segments(tmp_path):
    vol = [("squares", _squares())]
    common = dict(modality="unit", seed=3, log_every=1, val_every=0, save_every=0, **TINY_TRAIN)
    list(train(vol, tmp_path / "a", TrainConfig(steps=4, **common)))
    # lr 0: the weights stay those of the source prior, so they must arrive unchanged
    events = list(train(vol, tmp_path / "b", TrainConfig(steps=7, init=tmp_path / "a",
                                                         **dict(common, lr=0.0))))
    assert [e.step for e in events] == [5, 6, 7]
    a, meta_a = load_checkpoint(tmp_path / "a")
    b, meta_b = load_checkpoint(tmp_path / "b")
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(va, vb, rtol=0, atol=1e-7, msg=k)
    assert meta_b["steps"] == 7
    assert meta_b["initialised_from"] == {"name": "a", "steps": 4, "same_training_data": True}
    segs = meta_b["segments"]
    assert [(s["start_step"], s["end_step"], s["optimiser"]) for s in segs] == \
        [(0, 4, "fresh"), (4, 7, "fresh")]
    assert meta_b["wall_time_s"] >= meta_a["wall_time_s"]
    # a different network or modality, or init together with resume, is refused
    with pytest.raises(InputError, match="architecture"):
        other = {**dict(build_unet("tiny").config), "channels": [8, 8]}
        next(train(vol, tmp_path / "c", TrainConfig(steps=7, init=tmp_path / "a",
                                                    **dict(common, network=other))))
    with pytest.raises(InputError, match="modality"):
        ct_vol = [TrainingVolume(_squares(), "squares")]  # already normalised: modality ct
        next(train(ct_vol, tmp_path / "d", TrainConfig(steps=7, init=tmp_path / "a",
                                                       **dict(common, modality="ct"))))
    with pytest.raises(InputError, match="not both"):
        next(train(vol, tmp_path / "b", TrainConfig(steps=9, init=tmp_path / "a", resume=True,
                                                    **common)))


def test_api_train_takes_the_same_options_as_the_cli(tmp_path):
    """api.train: volumes in their own units and TrainConfig's fields as keywords."""
    from napari_patchdiff import api

    hu = np.full((3, 32, 32), -1000.0, dtype=np.float32)
    hu[:, 8:24, 8:24] = 40.0
    seen = []
    meta = api.train([("phantom", hu)], tmp_path / "p", network="tiny", steps=2, batch=2,
                     patch_sizes=(16,), val_fraction=0, on_event=seen.append)
    assert meta["steps"] == 2 and meta["modality"] == "ct" and seen[-1].step == 2
    assert meta["patch_probs"] == [1.0] and meta["training_data"][0]["name"] == "phantom"
    with pytest.raises(InputError, match="lr"):
        api.train([("phantom", hu)], tmp_path / "q", network="tiny", steps=2, lr=float("nan"))


def test_textured_phantoms_are_reproducible_on_the_ct_scale_and_carry_texture():
    """The textured synthetic set (training/phantoms.py): the same seed gives the same images,
    values stay on the normalised CT scale, three in four images are textured bodies, and those
    have fine-scale structure that the piecewise-constant ellipses lack."""
    from napari_patchdiff.training.phantoms import phantom_slices

    a = phantom_slices(8, shape=(64, 64), seed=3, textured=True)
    b = phantom_slices(8, shape=(64, 64), seed=3, textured=True)
    assert a.shape == (8, 64, 64) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert not np.array_equal(a, phantom_slices(8, shape=(64, 64), seed=3))

    def rough(img):  # share of body pixels whose 4-neighbour Laplacian is not ~0
        lap = np.abs(4 * img[1:-1, 1:-1] - img[:-2, 1:-1] - img[2:, 1:-1] - img[1:-1, :-2]
                     - img[1:-1, 2:])
        body = img[1:-1, 1:-1] > 0.3
        return float((lap[body] > 1e-4).mean()) if body.any() else 0.0

    textured = [rough(a[i]) for i in range(8) if i % 4 != 3]
    plain = [rough(x) for x in phantom_slices(6, shape=(64, 64), seed=3)]
    assert min(textured) > 0.5 > max(plain)
