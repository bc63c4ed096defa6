"""Volumes: windows of slices in bounded memory, coupling along z, streaming and cancel."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_patchdiff import api
from napari_patchdiff.events import Cancelled, CancelToken
from napari_patchdiff.recon.volumes import windows
from napari_patchdiff.solvers import Volume, get_solver, tv

from gaussian_model import DT, N, smooth_prior  # noqa: E402


def _volume_problem(depth=7, noise=0.05, seed=0):
    """A smooth random volume (slices drawn from the Gaussian prior, then smoothed along z),
    inpainting of half its pixels."""
    prior = smooth_prior()
    g = torch.Generator().manual_seed(seed)
    L = torch.linalg.cholesky(prior.Sigma)
    x = (prior.mu + (L @ torch.randn(N * N, depth, generator=g, dtype=DT)).T).reshape(depth, N, N)
    x = torch.cumsum(x - prior.mu.reshape(N, N), dim=0) / np.sqrt(depth) + prior.mu.reshape(N, N)
    truth = api.truth_from_array(np.clip(x.numpy(), 0, 1), {"spacing": (5.0, 1.0, 1.0)},
                                 modality="unit")
    return prior, api.simulate(truth, "inpaint", noise_std=noise, seed=seed, fraction=0.5,
                               dtype=DT)


def _z_variation(x) -> float:
    """Mean absolute difference between neighbouring slices."""
    return float(np.abs(np.diff(x, axis=0)).mean())


def test_windows_keep_every_slice_once():
    for depth, batch, overlap in ((1, 8, 0), (16, 8, 2), (17, 5, 1), (256, 8, 2)):
        ws = windows(depth, batch, overlap)
        kept = [i for w in ws for i in range(w.keep_start, w.keep_stop)]
        assert kept == list(range(depth))
        assert all(0 <= w.start <= w.keep_start < w.keep_stop <= w.stop <= depth for w in ws)
        assert max(w.stop - w.start for w in ws) <= batch + 2 * overlap


def test_z_differences_stay_inside_each_volume():
    x = torch.arange(12, dtype=DT).reshape(6, 1, 1, 2)
    g = tv.gradient_z(x, depth=3)
    assert torch.all(g[2] == 0) and torch.all(g[5] == 0) and torch.all(g[0] == 2)
    q = torch.randn(6, 1, 1, 2, dtype=DT)
    torch.testing.assert_close((tv.gradient_z(x, 3) * q).sum(),
                               (x * tv.gradient_z_adjoint(q, 3)).sum())


def test_window_by_window_equals_one_batch_for_slice_wise_methods():
    prior, problem = _volume_problem()
    one = api.solve(problem, "admm-tv", iterations=20, batch=7)
    windowed = api.solve(problem, "admm-tv", iterations=20, batch=3)
    np.testing.assert_allclose(windowed.recon, one.recon, atol=1e-10)
    assert windowed.report["finished_slices"] == list(range(7))
    # DDS draws each slice's noise from its own stream: the window does not matter
    a = api.solve(problem, "dds", prior=prior, nfe=6, batch=2, z_weight=0.0, seed=3)
    b = api.solve(problem, "dds", prior=prior, nfe=6, batch=5, z_weight=0.0, seed=3)
    np.testing.assert_allclose(a.recon, b.recon, atol=1e-10)


# PnP-ADMM with a denoiser schedule that suits this small Gaussian volume (its CT defaults
# reach 16 dB here, with or without coupling)
@pytest.mark.parametrize("method,extra", [
    ("dds", {"eta": 0.0}), ("pnp-admm", {"sigma_start": 0.3, "sigma_end": 0.05})])
@pytest.mark.parametrize("name,weight,smoother,step", [
    ("z_weight", 0.5, 0.8, None), ("z_tv", 0.05, 0.9, "admm"), ("z_tv", 0.05, 0.9, "prox")])
def test_z_coupling_smooths_along_z_and_helps_a_smooth_volume(method, extra, name, weight,
                                                               smoother, step):
    """Quadratic (``z_weight``) and total-variation (``z_tv``) coupling along z; z-TV by ADMM
    inside the data step or by its proximal map after it (``z_tv_step``)."""
    prior, problem = _volume_problem(noise=0.1)
    off = {"z_weight": 0.0, "z_tv": 0.0, **extra, **({"z_tv_step": step} if step else {})}
    flat = api.solve(problem, method, prior=prior, nfe=10, **off, seed=1)
    coupled = api.solve(problem, method, prior=prior, nfe=10, **{**off, name: weight}, seed=1)
    assert _z_variation(coupled.recon) < smoother * _z_variation(flat.recon)
    assert coupled.report["psnr"] > flat.report["psnr"]
    assert coupled.report["method_params"][name] == weight


def test_z_tv_default_tells_limited_angle_from_full_range_ct():
    from napari_patchdiff.operators import make_operator
    from napari_patchdiff.solvers.defaults import overriding

    dds = get_solver("dds")
    volume = Volume(8, 2.5)
    full = make_operator("ct-parallel", (N, N), views=8)
    limited = make_operator("ct-parallel", (N, N), views=30, angular_range=90.0)
    fan_short = make_operator("ct-fan", (N, N), views=30, angular_range=200.0)
    assert (full.coverage, limited.coverage) == (1.0, 0.5) and fan_short.coverage < 1
    with overriding(full.name, {"dds.z_tv_ref": 0.03, "dds.z_tv_ref_limited_angle": 0.1}):
        assert dds.resolve(full, 0.1, volume)["z_tv"] == pytest.approx(0.06)
        assert dds.resolve(limited, 0.1, volume)["z_tv"] == pytest.approx(0.2)
    with overriding(fan_short.name, {"dds.z_tv_ref": 0.03, "dds.z_tv_ref_limited_angle": 0.1}):
        assert dds.resolve(fan_short, 0.1, volume)["z_tv"] == pytest.approx(0.2)
    # the way the term enters the step has its own limited-angle value too
    with overriding(full.name, {"dds.z_tv_step": "admm", "dds.z_tv_step_limited_angle": "prox"}):
        assert dds.resolve(full, 0.1, volume)["z_tv_step"] == "admm"
        assert dds.resolve(limited, 0.1, volume)["z_tv_step"] == "prox"
        assert dds.resolve(limited, 0.1, volume, z_tv_step="admm")["z_tv_step"] == "admm"


@pytest.mark.parametrize("method,name,power", [
    ("dds", "z_weight", 2), ("pnp-admm", "z_weight", 2), ("dds", "z_tv", 1),
    ("pnp-admm", "z_tv", 1), ("dps", "z_tv", 1), ("padis", "z_tv", 1), ("langevin", "z_tv", 1)])
def test_z_coupling_default_follows_the_slice_spacing(method, name, power):
    """The quadratic weight scales like spacing^-2, the TV weight like spacing^-1."""
    from napari_patchdiff.solvers.defaults import overriding

    op = _volume_problem()[1].op
    solver = get_solver(method)
    assert solver.resolve(op, 0.1)[name] == 0.0  # one image: nothing to couple
    with overriding(op.name, {f"{method}.{name}_ref": 0.2}):
        assert solver.resolve(op, 0.1, Volume(8, 5.0))[name] == pytest.approx(0.2)
        assert solver.resolve(op, 0.1, Volume(8, 2.5))[name] == pytest.approx(0.2 * 2**power)
        assert solver.resolve(op, 0.1, Volume(8, None))[name] == pytest.approx(0.2)


# each sampler at settings that suit this small Gaussian volume (its CT defaults take 1000
# evaluations)
@pytest.mark.parametrize("method,extra", [
    ("dps", dict(nfe=40, zeta=0.5)), ("padis", dict(nfe=100, inner=10, zeta=0.05)),
    ("langevin", dict(nfe=100, inner=10))])
def test_z_tv_couples_the_denoised_estimates_of_samplers_without_a_data_step(method, extra):
    """DPS, PaDIS and Langevin replace each step's denoised estimate by its proximal map of TV
    along z; off by default (untuned), and a single image has nothing to couple."""
    prior, problem = _volume_problem(noise=0.1)
    flat = api.solve(problem, method, prior=prior, seed=1, **extra)
    assert flat.report["method_params"]["z_tv"] == 0.0
    coupled = api.solve(problem, method, prior=prior, z_tv=0.05, seed=1, **extra)
    assert coupled.report["method_params"]["z_tv"] == 0.05
    assert _z_variation(coupled.recon) < 0.3 * _z_variation(flat.recon)
    assert coupled.report["psnr"] > flat.report["psnr"] + 2.0
    single = api.simulate(api.truth_from_array(problem.truth.x[3], modality="unit"), "inpaint",
                          noise_std=0.1, seed=0, fraction=0.5, dtype=DT)
    runs = [api.solve(single, method, prior=prior, z_tv=w, seed=1, **extra) for w in (0.0, 0.05)]
    np.testing.assert_array_equal(runs[0].recon, runs[1].recon)


def test_a_cancelled_volume_keeps_its_finished_slices():
    prior, problem = _volume_problem()
    full = api.solve(problem, "dds", prior=prior, nfe=4, batch=3, z_weight=0.0, seed=2)
    token, seen = CancelToken(), []

    def cancel_in_the_second_window(ev):
        seen.append(ev)
        if ev.info["window"][0] == 3 and ev.info["window_step"] == 2:
            token.cancel()

    with pytest.raises(Cancelled) as info:
        api.solve(problem, "dds", prior=prior, nfe=4, batch=3, z_weight=0.0, seed=2,
                  cancel=token, on_event=cancel_in_the_second_window)
    partial = info.value.partial
    assert partial.report["finished_slices"] == [0, 1, 2] and partial.report["cancelled"]
    np.testing.assert_allclose(partial.recon[:3], full.recon[:3], atol=1e-10)
    # every event carried the whole volume, filling in window by window
    assert all(ev.estimate.shape[0] == 7 for ev in seen)


def _data_step(seed: int):
    """One data step's inputs on a 6-slice volume: ``(prior, problem, x0_hat, A^T y, gamma)``."""
    prior, problem = _volume_problem(depth=6, noise=0.05)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand((6, 1, N, N), generator=g, dtype=DT)
    return prior, problem, x0, problem.op.adjoint(problem.y), 2.0


def test_z_tv_data_step_converges_to_the_minimiser():
    """The ADMM of :class:`ZTotalVariation`, iterated on one data step, reaches the minimiser of
    ``||x - x0||^2 / 2 + gamma ||A x - y||^2 / 2 + w ||D_z x||_1``: with a weight beyond every
    subgradient the L1 penalty is exact, so each volume's slices become one image, the
    minimiser of the sum of the slices' terms; slices of two volumes in a batch stay apart."""
    from napari_patchdiff.solvers.diffusion.common import ZTotalVariation

    _, problem, x0, aty, gamma = _data_step(seed=4)
    op = problem.op
    ztv = ZTotalVariation(1e3, Volume(3, 5.0), 6, rho=1.0)
    for _ in range(400):
        x = ztv.solve(op, x0, aty, gamma, iterations=0)
    for v in range(2):  # the minimiser over one common image c per volume
        k = slice(3 * v, 3 * v + 3)
        c = op.solve(x0[k].mean(0, keepdim=True), aty[k].mean(0, keepdim=True), gamma)
        torch.testing.assert_close(x[k], c.expand(3, -1, -1, -1), atol=1e-6, rtol=0)
    # with a weight of 0 it converges to the uncoupled data step
    free = ZTotalVariation(0.0, Volume(3, 5.0), 6, rho=1.0)
    for _ in range(200):
        x = free.solve(op, x0, aty, gamma, iterations=0)
    torch.testing.assert_close(x, op.solve(x0, aty, gamma), atol=1e-6, rtol=0)


def test_z_tv_iterations_per_step_are_the_admm_iterations_continued():
    """``admm_iterations = k`` runs k ADMM iterations in one data step, each CG from the previous
    one's ``x``: the same as k one-iteration steps on the same ``x0_hat`` (float64, exact), and
    DDS passes ``z_tv_iterations`` through (a different run, reported)."""
    from napari_patchdiff.solvers.diffusion.common import ZTotalVariation

    prior, problem, x0, aty, gamma = _data_step(seed=5)
    op = problem.op
    several = ZTotalVariation(0.05, Volume(6, 5.0), 6, admm_iterations=3)
    one = ZTotalVariation(0.05, Volume(6, 5.0), 6)
    for _ in range(2):  # carried over from step to step in both
        x3 = several.solve(op, x0, aty, gamma, 2)
        x1 = None
        for _ in range(3):
            x1 = one.solve(op, x0, aty, gamma, 2, start=x1)
        torch.testing.assert_close(x3, x1, atol=0, rtol=0)
        torch.testing.assert_close(several.u, one.u, atol=0, rtol=0)
    runs = [api.solve(problem, "dds", prior=prior, nfe=3, z_tv=0.05, z_tv_step="admm",
                      z_tv_iterations=k, seed=1) for k in (1, 3)]
    assert [r.report["method_params"]["z_tv_iterations"] for r in runs] == [1, 3]
    assert not np.array_equal(runs[0].recon, runs[1].recon)
    with pytest.raises(Exception, match="z_tv_iterations"):
        api.solve(problem, "dds", prior=prior, nfe=2, z_tv=0.05, z_tv_iterations=0)


def test_z_tv_admm_refuses_noiseless_data_and_the_prox_step_runs():
    """Noiseless data have no finite data weight for the ADMM step: a clear error; the proximal
    step needs none."""
    prior, problem = _volume_problem(noise=0.1)
    noiseless = api.simulate(problem.truth, "inpaint", noise_std=0.0, seed=0, fraction=0.5,
                             dtype=DT)
    with pytest.raises(Exception, match="z_tv with z_tv_step 'admm' needs a finite"):
        api.solve(noiseless, "dds", prior=prior, nfe=2, z_tv=0.05, z_tv_step="admm")
    r = api.solve(noiseless, "dds", prior=prior, nfe=2, z_tv=0.05, z_tv_step="prox")
    assert np.isfinite(r.recon).all() and r.report["method_params"]["z_tv_step"] == "prox"
    with pytest.raises(Exception, match="z_tv_step"):
        api.solve(problem, "dds", prior=prior, nfe=2, z_tv=0.05, z_tv_step="fista")


def _z_tv_dual(x, v, depth):
    """The dual variable of the z-TV proximal map, ``p = -cumsum_z(x - v)`` per column of each
    volume (``x - v = D_z^T p``, with :func:`tv.gradient_z`'s differences), and the columns'
    sums of ``x - v`` (zero at a solution: the map keeps each column's mean)."""
    r = (x - v).reshape(-1, depth, *x.shape[1:])
    c = torch.cumsum(r, dim=1)
    return -c[:, :-1], c[:, -1]


@pytest.mark.parametrize("depth,weight", [(3, 0.05), (6, 0.3), (9, 1.0)])
def test_z_tv_prox_is_the_proximal_map(depth, weight):
    """:func:`z_tv_prox` solves ``min_v ||v - x||^2 / 2 + w ||D_z v||_1`` for each volume of the
    batch: the optimality conditions hold (``x - v = D_z^T p`` with ``|p| <= w`` and
    ``p = w sign(D_z v)`` wherever ``D_z v != 0``; float64, many steps), the volumes stay apart
    (the batch's map is each volume's map), and a weight of 0 changes nothing."""
    from napari_patchdiff.solvers.diffusion.common import z_tv_prox

    g = torch.Generator().manual_seed(depth)
    x = torch.randn((2 * depth, 1, 5, 4), generator=g, dtype=DT)
    v = z_tv_prox(x, weight, depth, iterations=3000)
    p, sums = _z_tv_dual(x, v, depth)
    dv = tv.gradient_z(v, depth).reshape(-1, depth, *x.shape[1:])[:, :-1]
    assert float(sums.abs().max()) < 1e-10
    assert float(p.abs().max()) <= weight * (1 + 1e-9)
    moving = dv.abs() > 1e-7
    assert moving.any() and (~moving).any()  # both kinds of condition are tested
    torch.testing.assert_close(p[moving], weight * torch.sign(dv[moving]), atol=1e-7, rtol=0)
    for k in range(2):
        part = slice(k * depth, (k + 1) * depth)
        torch.testing.assert_close(v[part], z_tv_prox(x[part], weight, depth, 3000),
                                   atol=1e-12, rtol=0)
    assert torch.equal(z_tv_prox(x, 0.0, depth), x)


def test_z_tv_prox_of_two_slices_in_closed_form():
    """Two slices: the mean stays, the difference shrinks by ``2 w`` towards 0."""
    from napari_patchdiff.solvers.diffusion.common import z_tv_prox

    x = torch.tensor([0.0, 1.0, 0.0, 0.05, 2.0, -1.0], dtype=DT).reshape(3, 2, 1, 1)
    x = x.permute(1, 0, 2, 3).reshape(2, 1, 3, 1)  # 2 slices of 3 pixels
    w = 0.1
    v = z_tv_prox(x, w, 2, iterations=200)
    mean, diff = (x[0] + x[1]) / 2, x[1] - x[0]
    shrunk = torch.sign(diff) * torch.clamp(diff.abs() - 2 * w, min=0)
    torch.testing.assert_close(v, torch.stack([mean - shrunk / 2, mean + shrunk / 2]),
                               atol=1e-12, rtol=0)


def test_z_tv_prox_default_steps_are_accurate_on_a_ct_volume():
    """The default number of FISTA steps reaches the map to a relative error below 1e-3 on the
    shipped 16-slice CT sample (a 64 x 64 crop plus noise) up to the largest weight tried in
    the tunings (0.1)."""
    import tifffile

    from napari_patchdiff.conventions import normalise
    from napari_patchdiff.solvers.diffusion.common import z_tv_prox

    sample = Path(__file__).resolve().parents[1] / "sample_data" / "ct_lung.tif"
    x, _ = normalise(tifffile.imread(sample).astype(np.float32), "ct")
    x = torch.as_tensor(x, dtype=DT)[:, None, 96:160, 96:160]
    x = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=DT)
    for weight in (0.01, 0.1):
        ref = z_tv_prox(x, weight, x.shape[0], iterations=4000)
        v = z_tv_prox(x, weight, x.shape[0])
        assert float((v - ref).norm() / (ref - x).norm()) < 1e-3
