"""3D Cartesian MRI (``mri-cartesian-3d``): adjoint, exact data step, masks, bad inputs, the
API's volume handling, the command line end to end, and a classical method on a phantom."""
import json

import numpy as np
import pytest
import torch

from napari_patchdiff import api
from napari_patchdiff.cli import main
from napari_patchdiff.errors import InputError
from napari_patchdiff.operators import make_operator, phase_encode_mask
from napari_patchdiff.operators.mri3d import POISSON_CENTRE, _centre_block

F64 = torch.float64
NAME = "mri-cartesian-3d"


def _phantom(d=8, h=32, w=32):
    """Three overlapping ellipsoids on the normalised scale, ``(d, h, w)``."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (d, h, w)), indexing="ij")
    v = 0.2 * ((z / 0.95) ** 2 + (y / 0.9) ** 2 + (x / 0.8) ** 2 < 1)
    v += 0.5 * ((z / 0.7) ** 2 + ((y - 0.1) / 0.5) ** 2 + ((x + 0.2) / 0.35) ** 2 < 1)
    v += 0.3 * ((z / 0.8) ** 2 + ((y + 0.4) / 0.2) ** 2 + ((x - 0.3) / 0.25) ** 2 < 1)
    return v.astype(np.float32)


def _inner(a, b):
    return float((torch.conj(a) * b).real.sum() if a.is_complex() else (a * b).sum())


def _rand_k(shape, g):
    return torch.complex(torch.randn(shape, generator=g, dtype=F64),
                         torch.randn(shape, generator=g, dtype=F64))


@pytest.mark.parametrize("mask", ["poisson", "lines"])
def test_adjoint_float64(mask):
    """<A x, y> = <x, A^T y>, on a batch of two volumes of depth 8 (an ensemble's layout)."""
    g = torch.Generator().manual_seed(0)
    op = make_operator(NAME, (24, 32), dtype=F64, depth=8, mask=mask, acceleration=4)
    x = torch.rand(16, 1, 24, 32, generator=g, dtype=F64)
    y = op(x)
    assert y.shape == x.shape and y.is_complex()
    yr = _rand_k(y.shape, g)
    lhs, rhs = _inner(y, yr), _inner(x, op.adjoint(yr))
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)
    x2 = torch.rand(16, 1, 24, 32, generator=g, dtype=F64)
    assert _inner(op.normal(x), x2) == pytest.approx(_inner(op(x), op(x2)), rel=1e-10)
    # the two volumes are measured independently: the second alone gives the same data
    torch.testing.assert_close(op(x[8:]), y[8:])
    # the slices are coupled: changing one slice changes every plane of k-space
    x3 = x[:8].clone()
    x3[0] += 1.0
    assert ((op(x3) - y[:8]).abs().sum(dim=(1, 2, 3)) > 0).all()
    assert op.norm() == 1.0 and op.initial(y).shape == x.shape


def test_exact_solve_satisfies_normal_equations():
    g = torch.Generator().manual_seed(1)
    op = make_operator(NAME, (32, 32), dtype=F64, depth=8, acceleration=8)
    truth = torch.rand(8, 1, 32, 32, generator=g, dtype=F64)
    y = op(truth)
    aty = op.adjoint(y)
    z = torch.rand(8, 1, 32, 32, generator=g, dtype=F64)
    for gamma in (0.3, 5.0):
        x = op.solve(z, aty, gamma)
        residual = x + gamma * op.normal(x) - (z + gamma * aty)
        assert float(residual.norm()) <= 1e-10 * float((z + gamma * aty).norm())
    x = op.solve(z, aty)  # gamma = inf: A^T A x = A^T y, the data fitted exactly
    assert float((op.normal(x) - aty).norm()) <= 1e-10 * float(aty.norm())
    assert float((op(x) - y).abs().max()) <= 1e-10
    # early-stopped CG (DDS, PnP) takes its step sizes per volume: two volumes in one batch
    # give what each gives alone
    two = make_operator(NAME, (32, 32), dtype=F64, depth=8, acceleration=8)
    zz, aa = torch.cat([z, z.flip(0)]), torch.cat([aty, aty.flip(0)])
    both = two.solve(zz, aa, 2.0, iterations=1)
    torch.testing.assert_close(both[:8], op.solve(z, aty, 2.0, iterations=1))
    torch.testing.assert_close(both[8:], op.solve(z.flip(0), aty.flip(0), 2.0, iterations=1))


@pytest.mark.parametrize("kind", ["poisson", "lines"])
@pytest.mark.parametrize("acceleration", [4, 8, 16])
def test_mask_acceleration_centre_and_seed(kind, acceleration):
    d, h = 16, 64
    centre = POISSON_CENTRE if kind == "poisson" else 0.32 / acceleration
    m = phase_encode_mask(d, h, acceleration, kind, centre, 3)
    assert m.shape == (d, h) and m.dtype == bool
    assert m.size / m.sum() == pytest.approx(acceleration, rel=0.10)
    rows = _centre_block(h, centre)
    planes = _centre_block(d, centre) if kind == "poisson" else slice(0, d)
    assert m[planes, rows].all() and m[d // 2, h // 2]
    if kind == "lines":  # whole ky rows: every kz of a kept ky
        assert (m == m[:1]).all()
    # deterministic given the seed, another seed another mask
    assert np.array_equal(m, phase_encode_mask.__wrapped__(d, h, acceleration, kind, centre, 3))
    assert not np.array_equal(m, phase_encode_mask(d, h, acceleration, kind, centre, 4))
    op = make_operator(NAME, (h, 32), acceleration=acceleration, mask=kind, mask_seed=3, depth=d)
    assert np.array_equal(op.mask_for(d)[:, :, 0].numpy() > 0, m)


def test_bad_inputs_are_refused_clearly():
    vol = api.truth_from_array(_phantom(), modality="unit")
    with pytest.raises(InputError, match="acceleration must be >= 1"):
        api.simulate(vol, NAME, acceleration=0)
    with pytest.raises(InputError, match="mask must be one of poisson, lines"):
        api.simulate(vol, NAME, mask="radial")
    with pytest.raises(InputError, match="whole volume .* got a 2D image"):
        api.simulate(api.truth_from_array(_phantom()[3], modality="unit"), NAME)
    with pytest.raises(InputError, match="drop slice="):
        api.simulate(api.truth_from_array(_phantom(), modality="unit", slice=3), NAME)
    with pytest.raises(InputError, match="whole volume"):
        api.from_measurement(np.zeros((32, 32), np.complex64), NAME, (32, 32))
    with pytest.raises(InputError, match="depth 4 was given, but the volume has 8"):
        api.simulate(vol, NAME, depth=4)
    with pytest.raises(InputError, match="fewer than the .* fully sampled centre"):
        api.simulate(vol, NAME, acceleration=16, center=0.5)
    op = make_operator(NAME, (32, 32), depth=8)
    with pytest.raises(InputError, match="couples the 8 slices.*got 5"):
        op(torch.rand(5, 1, 32, 32))
    problem = api.simulate(vol, NAME, acceleration=4)
    with pytest.raises(InputError, match="adaptation does not yet work"):
        api.solve(problem, "dds", prior="mri", nfe=2, adapt=True)


def test_volume_runs_as_one_window_and_round_trips():
    """A volume deeper than the window runs whole (the data couple every slice); the problem
    from the measurement alone (its depth from the stack) gives the same reconstruction."""
    vol = api.truth_from_array(_phantom(), modality="unit")
    problem = api.simulate(vol, NAME, acceleration=8, noise_std=0.01)
    assert problem.op.params["depth"] == 8 and problem.volume.depth == 8
    whole = api.solve(problem, "cg")
    windowed = api.solve(problem, "cg", batch=3)
    assert "finished_slices" not in windowed.report
    np.testing.assert_array_equal(whole.recon, windowed.recon)
    again = api.from_measurement(problem.y[:, 0].numpy(), NAME, (32, 32),
                                 **{k: v for k, v in problem.op.params.items() if k != "depth"})
    assert again.op.params == problem.op.params
    np.testing.assert_array_equal(api.solve(again, "cg").recon, whole.recon)
    # the noise std, estimated from the k-space alone
    noisy = api.simulate(vol, NAME, acceleration=4, noise_std=0.05)
    assert noisy.op.estimate_noise(noisy.y) == pytest.approx(0.05, rel=0.25)


def test_zero_filled_below_admm_tv_and_dds_runs():
    vol = api.truth_from_array(_phantom(), modality="unit")
    problem = api.simulate(vol, NAME, acceleration=8, noise_std=0.005)
    zf = api.solve(problem, "zero-filled").report["psnr"]
    tv = api.solve(problem, "admm-tv", iterations=30).report["psnr"]
    assert zf + 3 < tv, (zf, tv)
    dds = api.solve(problem, "dds", prior="mri", nfe=2)
    assert dds.recon.shape == (8, 32, 32) and np.isfinite(dds.recon).all()
    # DDS's last step is the exact data step: the result fits the data to the noise
    x = torch.from_numpy(dds.recon)[:, None].to(problem.op.dtype)
    fit = (problem.op(x) - problem.y).abs()
    assert float(fit.max()) < 0.1


def test_cli_end_to_end(tmp_path, capsys):
    volume = tmp_path / "vol.npy"
    np.save(volume, _phantom())

    def run(*argv):
        code = main([str(a) for a in argv])
        return code, capsys.readouterr().err

    code, err = run("reconstruct", volume, "--modality", "unit", "--operator", NAME,
                    "--acceleration", 8, "--mask", "poisson", "--noise", 0.005, "--method",
                    "zero-filled", "--out", tmp_path / "sim", "--quiet")
    assert code == 0, err
    report = json.loads((tmp_path / "sim" / "report.json").read_text())
    assert report["operator"]["operator"] == NAME and report["operator"]["depth"] == 8
    assert report["operator"]["mask"] == "poisson" and 10 < report["psnr"] < 60
    code, err = run("reconstruct", "--measurement", tmp_path / "sim" / "measurement.tif",
                    "--method", "zero-filled", "--out", tmp_path / "measured", "--quiet")
    assert code == 0, err
    code, err = run("reconstruct", "--measurement", tmp_path / "sim" / "measurement.tif",
                    "--method", "zero-filled", "--slice", 2, "--out", tmp_path / "one")
    assert code == 2 and "reconstruct the whole volume" in err
    code, err = run("reconstruct", volume, "--modality", "unit", "--operator", "mri-cartesian",
                    "--mask", "poisson", "--method", "zero-filled", "--out", tmp_path / "2d")
    assert code == 2 and "mask must be one of equispaced, random" in err
