"""``Operator.estimate_noise``: the measurement noise std from the measurement alone, checked on
the shipped sample slices at known noise levels, and how ``load_measurement`` and the CLI use it.

Accuracy achieved (worst ``|estimate / true - 1|`` on CT sample slices 3, 8, 10 and MRI sample
slices 5, 11, 15, noise seeds 1 and 2; the bounds asserted below leave some margin):

* ct-parallel / ct-fan, 20 or 60 views, noise 0.1, 0.5, 2 (line-integral units): 7 % (the rays
  that miss the image are pure noise: ~700 bins);
* mri-cartesian 4x equispaced / 8x random, noise 0.002, 0.005, 0.02: 3 % (Hermitian residual);
* denoise: 11 % at 0.01, 1 % at 0.05 and 0.1; blur-gaussian: 1 % at 0.01, 0.05, 0.1;
* superres 4x: 15 % at 0.05 and 0.1; at 0.01 up to +112 % (MRI; +46 % CT);
* inpaint 30 %: 5 % at 0.05 and 0.1; at 0.01 up to +49 % (MRI; +9 % CT).

So: within 10 % for CT, MRI, denoising and blur at every level tested, within 25 % for
super-resolution and inpainting at realistic noise (>= 0.05). Below that, the estimate of those
two is an upper bound: the slice's own fine texture (on a 64 x 64 pooled image, or along runs of
observed pixels) counts as noise (it never fell below the true value). Noiseless data give a small
value (0 for CT and MRI, < 0.015 for the image-domain operators with their default parameters),
never an error.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from napari_patchdiff import io
from napari_patchdiff.operators import make_operator
from napari_patchdiff.operators.base import highpass, image_noise_std, robust_std
from napari_patchdiff.recon.problem import from_measurement, load_measurement, load_truth, simulate


@pytest.fixture(scope="module")
def truths():
    return {"ct": load_truth("sample:ct", slice=8), "mri": load_truth("sample:mri", slice=11)}


def _estimate(truth, operator, sigma, seed=1, **params):
    problem = simulate(truth, operator, sigma, seed=seed, **params)
    value = problem.op.estimate_noise(problem.y)
    assert isinstance(value, float) and np.isfinite(value) and value >= 0
    return value


# (operator, params, noise levels, relative tolerance, tolerance at the lowest level)
CASES = [
    ("ct-parallel", {"views": 20}, (0.1, 0.5, 2.0), 0.10, 0.10),
    ("ct-fan", {"views": 20}, (0.1, 0.5, 2.0), 0.10, 0.10),
    ("mri-cartesian", {"acceleration": 4}, (0.002, 0.005, 0.02), 0.10, 0.10),
    ("mri-cartesian", {"acceleration": 8, "mask": "random"}, (0.002, 0.005, 0.02), 0.10, 0.10),
    ("denoise", {}, (0.01, 0.05, 0.1), 0.10, 0.15),
    ("blur-gaussian", {}, (0.01, 0.05, 0.1), 0.10, 0.10),
    ("superres", {"factor": 4}, (0.01, 0.05, 0.1), 0.25, None),
    ("inpaint", {}, (0.01, 0.05, 0.1), 0.25, None),
]


@pytest.mark.parametrize("operator,params,levels,tol,tol_low", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
@pytest.mark.parametrize("modality", ["ct", "mri"])
def test_estimate_at_known_noise_levels(truths, modality, operator, params, levels, tol,
                                        tol_low):
    truth = truths[modality]
    noiseless = _estimate(truth, operator, 0.0, **params)
    assert noiseless < 0.5 * levels[0] or (tol_low is None and noiseless < 1.5 * levels[0])
    for k, sigma in enumerate(levels):
        est = _estimate(truth, operator, sigma, **params)
        if k == 0 and tol_low is None:
            # low noise on a textured image: the image's own fine structure leaks into the
            # residual, so the estimate is an upper bound (at most about twice the noise here)
            assert 0.9 * sigma <= est <= 2.5 * sigma, (sigma, est)
        else:
            bound = tol_low if k == 0 else tol
            assert abs(est / sigma - 1) <= bound, (sigma, est)


def test_noiseless_measurements_give_a_small_value(truths):
    truth = truths["ct"]
    assert _estimate(truth, "ct-parallel", 0.0, views=20) < 0.01  # line integrals up to ~100
    assert _estimate(truths["mri"], "mri-cartesian", 0.0) < 1e-4
    for op in ("denoise", "blur-gaussian", "superres", "inpaint"):
        assert _estimate(truth, op, 0.0) < 0.015, op
    op = make_operator("denoise", (32, 32))
    assert op.estimate_noise(torch.zeros(1, 1, 32, 32)) == 0.0  # all zero: 0, no error
    mri = make_operator("mri-cartesian", (32, 32))
    assert mri.estimate_noise(torch.zeros(1, 1, 32, 32, dtype=torch.complex64)) == 0.0


def test_estimate_pools_a_stack_and_checks_its_input(truths):
    vol = load_truth("sample:ct")
    vol.x = vol.x[:3]
    problem = simulate(vol, "denoise", 0.05, seed=3)
    assert problem.y.shape[0] == 3
    assert problem.op.estimate_noise(problem.y) == pytest.approx(0.05, rel=0.05)
    with pytest.raises(Exception, match="expected a measurement batch"):
        problem.op.estimate_noise(problem.y[:, :, :10])


def test_estimators_ignore_what_is_not_measured(truths):
    """Unsampled k-space lines and missing pixels are not measured: whatever a file holds
    there (zeros in a real acquisition, noise in a simulation) does not change the estimate."""
    for operator, params, sigma in (("mri-cartesian", {"acceleration": 4}, 0.005),
                                    ("inpaint", {"fraction": 0.3}, 0.05)):
        problem = simulate(truths["mri"], operator, sigma, seed=1, **params)
        mask = problem.op.mask > 0
        zeroed = problem.y * mask
        assert problem.op.estimate_noise(zeroed) == problem.op.estimate_noise(problem.y)
        assert problem.op.estimate_noise(zeroed) == pytest.approx(sigma, rel=0.25)


def test_helpers():
    g = torch.Generator().manual_seed(0)
    n = torch.randn(1, 1, 200, 200, generator=g, dtype=torch.float64)
    assert robust_std(n) == pytest.approx(1.0, rel=0.03)
    assert robust_std(n + 5.0, centre=True) == pytest.approx(1.0, rel=0.03)
    assert robust_std(torch.empty(0)) == 0.0
    # the high-pass keeps white noise's std and removes cubic polynomials along an axis
    assert float(highpass(n).std()) == pytest.approx(1.0, rel=0.03)
    r = torch.arange(200, dtype=torch.float64) / 4
    cubic = (r[:, None] ** 3 + 2 * r[None, :] ** 2)[None, None]
    assert float(highpass(cubic).abs().max()) < 1e-6
    assert image_noise_std(0.1 * n + cubic / 1e3) == pytest.approx(0.1, rel=0.05)
    # complex data: each part has the std
    c = torch.complex(n, torch.randn(n.shape, generator=g, dtype=torch.float64))
    assert image_noise_std(0.3 * c) == pytest.approx(0.3, rel=0.05)


# ------------------------------------------------------------------------- load_measurement

def test_noise_origin_of_each_way_in(truths, tmp_path):
    truth = truths["ct"]
    sim = simulate(truth, "ct-parallel", 0.5, seed=1, views=20)
    assert sim.noise_origin == "simulated" and sim.noise_std == 0.5
    y = sim.y[0, 0].numpy()
    wrapped = from_measurement(y, "ct-parallel", (256, 256), views=20)
    assert wrapped.noise_origin == "given" and wrapped.noise_std == 0.0  # as before

    np.save(tmp_path / "sino.npy", y)  # no sidecar at all
    est = load_measurement(tmp_path / "sino.npy", operator="ct-parallel", image_shape=(256, 256),
                           views=20)
    assert est.noise_origin == "estimated"
    assert est.noise_std == pytest.approx(0.5, rel=0.10)
    given = load_measurement(tmp_path / "sino.npy", operator="ct-parallel",
                             image_shape=(256, 256), noise_std=0.3, views=20)
    assert given.noise_origin == "given" and given.noise_std == 0.3

    described = sim.describe_measurement()
    io.write_measurement(tmp_path / "m.tif", y, described)
    side = load_measurement(tmp_path / "m.tif")
    assert side.noise_origin == "sidecar" and side.noise_std == 0.5
    described.pop("noise_std")
    io.write_measurement(tmp_path / "m2.tif", y, described)
    est2 = load_measurement(tmp_path / "m2.tif")
    assert est2.noise_origin == "estimated" and est2.noise_std == pytest.approx(0.5, rel=0.10)


def test_estimate_uses_the_chosen_slice(tmp_path):
    vol = load_truth("sample:mri")
    vol.x = vol.x[:2]
    problem = simulate(vol, "mri-cartesian", 0.01, seed=2)
    y = problem.y[:, 0].numpy()
    np.save(tmp_path / "k.npy", y)
    for index in (0, 1):
        one = load_measurement(tmp_path / "k.npy", operator="mri-cartesian",
                               image_shape=(256, 256), slice=index)
        assert one.noise_origin == "estimated" and one.squeeze
        assert one.noise_std == pytest.approx(0.01, rel=0.10)


def test_cli_notes_an_estimated_noise_level(tmp_path, capsys):
    from napari_patchdiff.cli import main

    truth = load_truth("sample:ct", slice=8)
    sim = simulate(truth, "denoise", 0.05, seed=1)
    meta = sim.describe_measurement()
    meta.pop("noise_std")
    io.write_measurement(tmp_path / "y.tif", sim.y[0, 0].numpy(), meta)
    argv = ["reconstruct", "--measurement", str(tmp_path / "y.tif"), "--method", "cg",
            "--iterations", "1"]
    assert main(argv + ["--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    note = re.search(r"noise std estimated from the measurement: ([0-9.e-]+) \(give "
                     r"--noise-std to set it\)", err)
    assert note, err
    assert float(note.group(1)) == pytest.approx(0.05, rel=0.1)
    assert main(argv + ["--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert "estimated" not in capsys.readouterr().err
    assert main(argv + ["--out", str(tmp_path / "c"), "--noise-std", "0.05"]) == 0
    assert "estimated" not in capsys.readouterr().err
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["noise_std"] == pytest.approx(0.05, rel=0.1)
