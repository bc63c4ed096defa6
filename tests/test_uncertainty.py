"""Posterior ensembles, antithetic pairs, confidence intervals and calibration
(napari_patchdiff.uncertainty) on the linear-Gaussian model of gaussian_model.py, in float64."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gaussian_model import DT, N, exact_posterior, problem
from napari_patchdiff import api
from napari_patchdiff.errors import InputError
from napari_patchdiff.events import Cancelled, CancelToken
from napari_patchdiff.uncertainty import (SampleEvent, calibration_curve, ensemble,
                                          pair_correlation, parse_roi, region_interval,
                                          roi_mask, run_ensemble, summarise)

SY = 0.05
DDS = dict(nfe=12, eta=0.5, cg_iterations=2, gamma=(0.1 / SY) ** 2)


def gaussian_problem(sy=SY, seed=1):
    prior, op, x_true, y = problem(sy=sy, seed=seed)
    truth = api.Truth(x=x_true[0, 0].numpy().astype(np.float32), modality="unit")
    return prior, api.Problem(op=op, y=y, noise_std=sy, truth=truth, squeeze=True), x_true, y


def samples_of(events):
    return np.stack([ev.sample for ev in events if isinstance(ev, SampleEvent)])


def test_antithetic_pairs_have_within_pair_correlation_minus_one():
    prior, prob, _, _ = gaussian_problem()
    res = run_ensemble(prob, "dds", prior=prior, samples=8, design="antithetic", seed=3,
                       roi=[(0, 4), (0, 8)], **DDS)
    assert res.samples.shape == (8, N, N)
    varies = res.std > 1e-6
    assert varies.mean() > 0.9
    # f(x) = x: in a linear-Gaussian model DDS is affine in its noise stream, so each pair is
    # mean + L z and mean - L z (float32 outputs: 1e-5)
    np.testing.assert_allclose(res.pair_correlation[varies], -1.0, atol=1e-5)
    roi = res.report["roi"]
    assert roi["within_pair_correlation"] == pytest.approx(-1.0, abs=1e-5)
    assert roi["half_width"] < 1e-4 and roi["variance_reduction"] > 1e4


def test_iid_ensemble_has_no_pair_structure_and_is_reproducible():
    prior, prob, _, _ = gaussian_problem()
    a = samples_of(ensemble(prob, "dds", prior=prior, samples=6, seed=4, batch=4, **DDS))
    b = samples_of(ensemble(prob, "dds", prior=prior, samples=6, seed=4, batch=4, **DDS))
    c = samples_of(ensemble(prob, "dds", prior=prior, samples=6, seed=5, batch=4, **DDS))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # every sample has its own stream, so (with a prior that draws no patch shifts) the batch size
    # does not change the samples
    d = samples_of(ensemble(prob, "dds", prior=prior, samples=6, seed=4, batch=1, **DDS))
    np.testing.assert_allclose(a, d, atol=1e-6)
    res = summarise(a, "iid")
    assert res.pair_correlation is None and res.std.shape == (N, N)


@pytest.mark.parametrize("method,kw", [
    ("dds", dict(DDS, z_weight=0.5)), ("dds", dict(DDS, z_tv=0.5, z_tv_step="admm")),
    ("dds", dict(DDS, z_tv=0.5, z_tv_step="prox")), ("dps", dict(nfe=6, zeta=0.1, z_tv=0.5))])
def test_the_samples_of_one_image_are_never_coupled_along_z(method, kw):
    """A batch of samples of one image is not a volume: a coupling along z (given explicitly;
    the default is 0 for one image) leaves the samples as they are without it."""
    prior, prob, _, _ = gaussian_problem()
    together = samples_of(ensemble(prob, method, prior=prior, samples=4, seed=4, batch=4, **kw))
    apart = samples_of(ensemble(prob, method, prior=prior, samples=4, seed=4, batch=1, **kw))
    np.testing.assert_allclose(together, apart, atol=1e-6)


def test_langevin_ensemble_matches_the_exact_gaussian_posterior():
    """Annealed Langevin with the true likelihood samples the posterior: 200 samples, mean
    within 4 standard errors (plus 0.05 posterior sd for the finite step), variance within
    [0.6, 1.5] per pixel (the sampling sd of a variance from 200 draws is 10%; 64 pixels) and
    10% on average (measured: 1.04, the bias of the finite Langevin step)."""
    prior, prob, _, y = gaussian_problem()
    n = 200
    res = run_ensemble(prob, "langevin", prior=prior, samples=n, batch=n, seed=0, nfe=2400,
                       inner=120, epsilon=0.9, sigma_min=0.005, data_std=SY)
    m, C = exact_posterior(prior, prob.op, y, SY)
    sd = C.diag().sqrt().numpy().reshape(N, N)
    err = np.abs(res.mean - m.numpy().reshape(N, N))
    assert (err <= 4 * sd / np.sqrt(n) + 0.05 * sd).all(), (err / sd).max()
    ratio = res.std**2 / sd**2
    assert 0.6 < ratio.min() and ratio.max() < 1.5, (ratio.min(), ratio.max())
    assert abs(ratio.mean() - 1) < 0.1, ratio.mean()


def test_region_interval_covers_at_the_nominal_rate_for_both_designs():
    """Synthetic per-sample statistics with a known mean: pairs with correlation -0.7. The
    design-correct intervals cover 90% of the time (2000 repetitions: +-3 binomial sd = 2%);
    treating the antithetic samples as iid would over-cover (the design matters)."""
    rng = np.random.default_rng(0)
    reps, pairs, mu, rho = 2000, 4, 0.3, -0.7
    cov = np.array([[1, rho], [rho, 1]]) * 0.01
    hit_anti = hit_naive = hit_iid = 0
    for _ in range(reps):
        ab = rng.multivariate_normal([mu, mu], cov, size=pairs)
        f = ab.reshape(-1)  # a0 b0 a1 b1 ...
        ci = region_interval(f, "antithetic", 0.9)
        hit_anti += ci["lower"] <= mu <= ci["upper"]
        naive = region_interval(f, "iid", 0.9)
        hit_naive += naive["lower"] <= mu <= naive["upper"]
        g = rng.normal(mu, 0.1, size=2 * pairs)
        iid = region_interval(g, "iid", 0.9)
        hit_iid += iid["lower"] <= mu <= iid["upper"]
    tol = 3 * np.sqrt(0.9 * 0.1 / reps)
    assert abs(hit_anti / reps - 0.9) < tol, hit_anti / reps
    assert abs(hit_iid / reps - 0.9) < tol, hit_iid / reps
    assert hit_naive / reps > 0.97  # the iid formula on pairs is far too wide
    # and the variance reduction estimate is about 1 / (1 + rho)
    f = rng.multivariate_normal([mu, mu], cov, size=4000).reshape(-1)
    assert region_interval(f, "antithetic")["variance_reduction"] == pytest.approx(1 / 0.3, rel=0.1)


def test_ensemble_ci_covers_the_sampler_mean_over_seeds():
    """End to end: the region mean of DDS samples has a known expectation in this model (the
    sampler is affine in its noise, so its mean is the zero-noise path); the 90% iid interval
    from 6 samples covers it at the nominal rate over 150 seeds (+-3 binomial sd)."""
    from gaussian_model import ZeroNoise
    from napari_patchdiff.solvers.diffusion import dds

    prior, prob, _, y = gaussian_problem()
    box = [(2, 6), (1, 7)]
    m = roi_mask(box, (N, N))
    centre = dds(prob.op, y, prior=prior, noise_source=ZeroNoise(0, dtype=DT), **DDS)
    for ev in centre:
        pass
    target = float(ev.estimate[0, 0].numpy()[m].mean())
    reps, hits = 150, 0
    for seed in range(reps):
        res = run_ensemble(prob, "dds", prior=prior, samples=6, batch=6, seed=seed, roi=box, **DDS)
        hits += res.report["roi"]["lower"] <= target <= res.report["roi"]["upper"]
    assert abs(hits / reps - 0.9) < 3 * np.sqrt(0.09 / reps), hits / reps


def test_calibration_curve_of_exact_posterior_draws_is_diagonal():
    """Samples from the exact posterior with the truth drawn from the prior: the coverage of the
    central intervals matches the nominal level (64 pixels x 40 truths, 100 samples each)."""
    g = torch.Generator().manual_seed(0)
    cover = {}
    for seed in range(40):
        prior, prob, x_true, y = gaussian_problem(seed=seed + 10)
        m, C = exact_posterior(prior, prob.op, y, SY)
        L = torch.linalg.cholesky(C)
        s = (m + (L @ torch.randn(N * N, 100, generator=g, dtype=DT)).T).reshape(100, N, N)
        for k, v in calibration_curve(s.numpy(), x_true[0, 0].numpy()).items():
            cover.setdefault(k, []).append(v)
    for level, values in cover.items():
        assert abs(np.mean(values) - float(level)) < 0.05, (level, np.mean(values))


def test_summary_with_truth_reports_coverage_and_region():
    rng = np.random.default_rng(1)
    centre = rng.random((16, 16))
    truth = centre + 0.1 * rng.standard_normal((16, 16))  # a draw like the samples
    samples = centre + 0.1 * rng.standard_normal((40, 16, 16))
    res = summarise(samples, "iid", truth=truth, roi=[(0, 8), (0, 8)], level=0.9)
    r = res.report
    assert 0.8 < r["coverage"] < 0.97
    assert set(r["calibration"]) >= {"0.5", "0.9"}
    assert r["roi"]["pixels"] == 64 and r["roi"]["lower"] < r["roi"]["estimate"] < r["roi"]["upper"]
    assert r["roi"]["truth"] == pytest.approx(truth[:8, :8].mean())
    assert (res.lower <= res.mean).all() and (res.mean <= res.upper).all()
    assert res.std.mean() == pytest.approx(0.1, rel=0.1)


def test_samples_stream_one_by_one_and_cancel_keeps_finished_pairs():
    prior, prob, _, _ = gaussian_problem()
    events = list(ensemble(prob, "dds", prior=prior, samples=4, design="antithetic", batch=2,
                           **DDS))
    done = [ev for ev in events if isinstance(ev, SampleEvent)]
    assert [ev.index for ev in done] == [0, 1, 2, 3]
    assert [(ev.pair, ev.member, ev.antithetic) for ev in done] == [
        (0, 0, False), (0, 1, True), (1, 0, False), (1, 1, True)]
    assert done[0].seed == done[1].seed != done[2].seed
    # sample events come after the last step of their batch
    first = events.index(done[0])
    assert events[first - 1].step == events[first - 1].total
    assert done[-1].nfe == 2 * DDS["nfe"]

    token = CancelToken()
    got = []

    def on_event(ev):
        if isinstance(ev, SampleEvent):
            got.append(ev)
            if len(got) == 4:
                token.cancel()

    with pytest.raises(Cancelled) as info:
        run_ensemble(prob, "dds", prior=prior, samples=8, design="antithetic", batch=4,
                     cancel=token, on_event=on_event, **DDS)
    partial = info.value.partial
    assert partial.samples.shape[0] == 4 and partial.report["cancelled"]


@pytest.mark.parametrize("kw, match", [
    (dict(samples=3, design="antithetic"), "multiple of 2"),
    (dict(samples=6, design="rqmc"), "multiple of 4"),
    (dict(samples=8, design="rqmc", batch=6), "batch"),
    (dict(samples=4, design="sobol"), "noise design"),
    (dict(samples=0), "positive"),
    (dict(samples=4, design="antithetic", batch=3), "batch"),
])
def test_bad_ensemble_arguments(kw, match):
    prior, prob, _, _ = gaussian_problem()
    with pytest.raises(InputError, match=match):
        next(iter(ensemble(prob, "dds", prior=prior, **kw)))


@pytest.mark.parametrize("method", ["admm-tv", "pnp-admm"])
def test_point_estimators_are_refused(method):
    """Classical methods and PnP-ADMM (a point estimate with the diffusion denoiser) make no
    posterior ensemble."""
    prior, prob, _, _ = gaussian_problem()
    with pytest.raises(InputError, match="not a posterior sampler"):
        next(iter(ensemble(prob, method, prior=prior, samples=2)))


def test_roi_parsing_and_errors(tmp_path):
    m = parse_roi("2:5,3:7", (8, 8))
    assert m.sum() == 12 and m[2, 3] and not m[5, 3]
    assert parse_roi("0:2,2:5,3:7", (4, 8, 8)).sum() == 24
    assert roi_mask([(2, 5), (3, 7)], (4, 8, 8)).sum() == 48
    for bad in ("a:b", "9:12,9:12"):
        with pytest.raises(InputError):
            parse_roi(bad, (8, 8))
    with pytest.raises(InputError, match="shape"):
        roi_mask(np.ones((4, 4), bool), (8, 8))
    with pytest.raises(InputError, match="three complete pairs"):
        pair_correlation(np.zeros((4, 4, 4)))  # two pairs: +-1 everywhere, meaningless
