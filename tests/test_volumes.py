"""Volumes: windows of slices in bounded memory, coupling along z, streaming and cancel."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_patchdiff import api
from napari_patchdiff.events import Cancelled, CancelToken
from napari_patchdiff.solvers import Volume, get_solver, tv
from napari_patchdiff.volumes import windows

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
@pytest.mark.parametrize("name,weight,smoother", [("z_weight", 0.5, 0.8), ("z_tv", 0.05, 0.9)])
def test_z_coupling_smooths_along_z_and_helps_a_smooth_volume(method, extra, name, weight,
                                                               smoother):
    """Quadratic (``z_weight``) and total-variation (``z_tv``) coupling along z."""
    prior, problem = _volume_problem(noise=0.1)
    off = {"z_weight": 0.0, "z_tv": 0.0, **extra}
    flat = api.solve(problem, method, prior=prior, nfe=10, **off, seed=1)
    coupled = api.solve(problem, method, prior=prior, nfe=10, **{**off, name: weight}, seed=1)

    def zvar(x):
        return float(np.abs(np.diff(x, axis=0)).mean())

    assert zvar(coupled.recon) < smoother * zvar(flat.recon)
    assert coupled.report["psnr"] > flat.report["psnr"]
    assert coupled.report["method_params"][name] == weight


def test_z_tv_default_tells_limited_angle_from_full_range_ct():
    from napari_patchdiff.operators import make_operator
    from napari_patchdiff.solvers.defaults import overridden

    dds = get_solver("dds")
    volume = Volume(8, 2.5)
    full = make_operator("ct-parallel", (N, N), views=8)
    limited = make_operator("ct-parallel", (N, N), views=30, angular_range=90.0)
    fan_short = make_operator("ct-fan", (N, N), views=30, angular_range=200.0)
    assert (full.coverage, limited.coverage) == (1.0, 0.5) and fan_short.coverage < 1
    with overridden(full.name, {"dds.z_tv_ref": 0.03, "dds.z_tv_ref_limited_angle": 0.1}):
        assert dds.resolve(full, 0.1, volume)["z_tv"] == pytest.approx(0.06)
        assert dds.resolve(limited, 0.1, volume)["z_tv"] == pytest.approx(0.2)
    with overridden(fan_short.name, {"dds.z_tv_ref": 0.03, "dds.z_tv_ref_limited_angle": 0.1}):
        assert dds.resolve(fan_short, 0.1, volume)["z_tv"] == pytest.approx(0.2)


@pytest.mark.parametrize("method", ["dds", "pnp-admm"])
@pytest.mark.parametrize("name,power", [("z_weight", 2), ("z_tv", 1)])
def test_z_coupling_default_follows_the_slice_spacing(method, name, power):
    """The quadratic weight scales like spacing^-2, the TV weight like spacing^-1."""
    from napari_patchdiff.solvers.defaults import overridden

    op = _volume_problem()[1].op
    solver = get_solver(method)
    assert solver.resolve(op, 0.1)[name] == 0.0  # one image: nothing to couple
    with overridden(op.name, {f"{method}.{name}_ref": 0.2}):
        assert solver.resolve(op, 0.1, Volume(8, 5.0))[name] == pytest.approx(0.2)
        assert solver.resolve(op, 0.1, Volume(8, 2.5))[name] == pytest.approx(0.2 * 2**power)
        assert solver.resolve(op, 0.1, Volume(8, None))[name] == pytest.approx(0.2)


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
    runs = [api.solve(problem, "dds", prior=prior, nfe=3, z_tv=0.05, z_tv_iterations=k, seed=1)
            for k in (1, 3)]
    assert [r.report["method_params"]["z_tv_iterations"] for r in runs] == [1, 3]
    assert not np.array_equal(runs[0].recon, runs[1].recon)
    with pytest.raises(Exception, match="z_tv_iterations"):
        api.solve(problem, "dds", prior=prior, nfe=2, z_tv=0.05, z_tv_iterations=0)


def test_z_tv_refuses_noiseless_data():
    """Noiseless data have no finite data weight for the ADMM step: a clear error."""
    prior, problem = _volume_problem(noise=0.1)
    noiseless = api.simulate(problem.truth, "inpaint", noise_std=0.0, seed=0, fraction=0.5,
                             dtype=DT)
    with pytest.raises(Exception, match="z_tv needs"):
        api.solve(noiseless, "dds", prior=prior, nfe=2, z_tv=0.05)
