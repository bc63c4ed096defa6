"""Exact-posterior tests of the diffusion samplers (DDS, DPS, PaDIS) with an analytic Gaussian
prior, in float64 on tiny images.

With a Gaussian prior N(mu, Sigma) the exact denoiser is D(x, s) = mu + Sigma (Sigma + s^2 I)^-1
(x - mu); with a linear operator and Gaussian noise the posterior is Gaussian in closed form:
C = (Sigma^-1 + A^T A / sy^2)^-1, m = C (Sigma^-1 mu + A^T y / sy^2).
"""
from __future__ import annotations

import math

import pytest
import torch

from napari_patchdiff.events import Cancelled, CancelToken
from napari_patchdiff.operators import make_operator
from napari_patchdiff.solvers import get_solver
from napari_patchdiff.solvers.diffusion import dds, dps, langevin, padis, pnp_admm
from napari_patchdiff.solvers.noise_source import NoiseSource

from gaussian_model import (DT, N, ZeroNoise, exact_posterior, last, problem, smooth_prior)


# ------------------------------------------------------------------------------------------------
# the noise source
# ------------------------------------------------------------------------------------------------


def test_noise_source_deterministic_and_antithetic():
    a, b = NoiseSource(3, dtype=DT), NoiseSource(3, dtype=DT)
    anti = NoiseSource(3, antithetic=True, dtype=DT)
    for shape in [(2, 1, 4, 4), (5,), (2, 1, 4, 4)]:
        za, zb, zn = a.randn(shape), b.randn(shape), anti.randn(shape)
        assert torch.equal(za, zb)
        assert torch.equal(zn, -za)
        assert za.dtype == DT and za.shape == shape
    assert not torch.equal(NoiseSource(4, dtype=DT).randn((8,)), NoiseSource(3, dtype=DT).randn((8,)))
    assert a.draws == 3 and a.numbers == 2 * 32 + 5
    # the prior's generator (patch shifts) is the same in both members of a pair
    assert torch.equal(torch.rand(4, generator=a.twin().prior_generator),
                       torch.rand(4, generator=NoiseSource(3).prior_generator))
    assert a.twin().antithetic and not anti.twin().antithetic


# ------------------------------------------------------------------------------------------------
# (a) determinism and antithetic pairs: in a linear-Gaussian model the sampler is affine in the noise
# ------------------------------------------------------------------------------------------------


def test_dds_eta0_deterministic_per_seed():
    prior, op, _, y = problem()
    yb = y.expand(3, -1, -1, -1)
    kw = dict(prior=prior, nfe=10, eta=0.0, cg_iterations=1)
    x1 = last(dds(op, yb, seed=7, **kw)).estimate
    x2 = last(dds(op, yb, noise_source=NoiseSource(7, dtype=DT), **kw)).estimate
    x3 = last(dds(op, yb, seed=8, **kw)).estimate
    assert torch.equal(x1, x2)
    assert not torch.allclose(x1, x3)
    # the three batch items got different initial noise, so they differ too
    assert not torch.allclose(x1[0], x1[1])


@pytest.mark.parametrize("eta,gamma", [(0.0, None), (0.0, 400.0), (0.5, None), (1.0, 400.0)])
def test_dds_antithetic_pairs_are_exactly_anticorrelated(eta, gamma):
    """x(z) = c + L z: the pair mean is the zero-noise path and rho = -1 for f(x) = x.

    cg_iterations = 1 is exact for inpainting (A^T A is a projection), so the data step is
    linear; more CG steps would make it (slightly) nonlinear through the CG step sizes."""
    prior, op, _, y = problem()
    pairs = 24
    yb = y.expand(pairs, -1, -1, -1)
    kw = dict(prior=prior, nfe=12, eta=eta, cg_iterations=1, gamma=gamma)
    xp = last(dds(op, yb, noise_source=NoiseSource(5, dtype=DT), **kw)).estimate.reshape(pairs, -1)
    xm = last(dds(op, yb, noise_source=NoiseSource(5, antithetic=True, dtype=DT), **kw)).estimate
    xm = xm.reshape(pairs, -1)
    x0 = last(dds(op, yb, noise_source=ZeroNoise(5, dtype=DT), **kw)).estimate.reshape(pairs, -1)
    torch.testing.assert_close((xp + xm) / 2, x0, atol=1e-10, rtol=0)
    # per-pixel correlation across pairs, on pixels whose samples vary
    cp, cm = xp - xp.mean(0), xm - xm.mean(0)
    var = (cp * cp).mean(0)
    varies = var > 1e-12 * var.max()
    assert varies.sum() >= N * N // 3
    rho = (cp * cm).mean(0)[varies] / torch.sqrt(var * (cm * cm).mean(0))[varies]
    assert float((rho + 1).abs().max()) < 1e-8


# ------------------------------------------------------------------------------------------------
# (b) calibration against the exact Gaussian posterior (measured, not assumed)
# ------------------------------------------------------------------------------------------------

SY = 0.05
B = 200


def _posterior_stats(sampler, **kw):
    prior, op, _, y = problem(sy=SY)
    m, C = exact_posterior(prior, op, y, SY)
    x = last(sampler(op, y.expand(B, -1, -1, -1), prior=prior, noise_source=NoiseSource(0, dtype=DT),
                     **kw)).estimate.reshape(B, -1)
    sd = C.diagonal().sqrt()
    missing = op.mask.reshape(-1) == 0
    return dict(x=x, m=m, C=C, sd=sd, missing=missing,
                bias_sd=(x.mean(0) - m) / sd,             # bias in posterior standard deviations
                z=(x.mean(0) - m) / (sd / math.sqrt(B)),  # bias in standard errors (exact sd)
                var_ratio=x.var(0) / C.diagonal())


def test_dds_monte_carlo_mean_matches_its_zero_noise_path():
    """The sample mean of 200 stochastic DDS samples (eta = 1, noisy-data weighting) estimates the
    sampler's own mean (the zero-noise path, the sampler being affine in the noise) to within
    4 standard errors: the Monte Carlo part of the calibration check works."""
    kw = dict(nfe=50, eta=1.0, cg_iterations=1, gamma=1 / SY**2)
    st = _posterior_stats(dds, **kw)
    prior, op, _, y = problem(sy=SY)
    x0 = last(dds(op, y, prior=prior, noise_source=ZeroNoise(0, dtype=DT), **kw)).estimate.reshape(-1)
    x = st["x"]
    se = x.std(0) / math.sqrt(B)
    varies = se > 1e-9
    assert float(((x.mean(0) - x0)[varies] / se[varies]).abs().max()) < 4.5
    # pixels with no spread (observed pixels at the last step) equal the zero-noise path
    torch.testing.assert_close(x.mean(0)[~varies], x0[~varies], atol=1e-8, rtol=0)


def test_dds_is_not_calibrated_measured_bias():
    """MEASURED (8x8 inpainting, 50 % observed, sy = 0.05, smooth Gaussian prior, nfe = 50,
    eta = 1, gamma = 1/sy^2, 200 samples): DDS is NOT calibrated. Its mean is off the exact
    posterior mean by up to ~0.58 posterior sd on missing pixels (rms ~0.24 sd; ~19 standard
    errors at B = 200), observed pixels are pinned to ~y (rms bias ~0.55 sd, zero spread: the
    fixed gamma over-trusts the data when x0_hat is already accurate at small sigma), and the
    per-pixel variance on missing pixels is about half the posterior variance (median ratio ~0.49;
    ~0.93 with eta = 0.15). This test pins those numbers loosely so that a change is noticed."""
    st = _posterior_stats(dds, nfe=50, eta=1.0, cg_iterations=1, gamma=1 / SY**2)
    miss = st["missing"]
    b = st["bias_sd"]
    assert 0.3 < float(b[miss].abs().max()) < 0.9
    assert 0.1 < float(b[miss].pow(2).mean().sqrt()) < 0.4
    assert 0.35 < float(b[~miss].pow(2).mean().sqrt()) < 0.75
    assert 0.3 < float(st["var_ratio"][miss].median()) < 0.7
    assert float(st["var_ratio"][~miss].median()) < 0.01


@pytest.mark.xfail(strict=True, reason="DDS is not a calibrated posterior sampler: bias up to "
                   "~0.6 posterior sd (~19 standard errors at 200 samples), see the test above")
def test_dds_posterior_mean_within_4_standard_errors():
    st = _posterior_stats(dds, nfe=50, eta=1.0, cg_iterations=1, gamma=1 / SY**2)
    assert float(st["z"].abs().max()) < 4


def test_padis_and_dps_measured_calibration():
    """MEASURED, same problem and 200 samples (not calibrated either; numbers for the record):

    * PaDIS, 30 levels x 5 inner, zeta = 0.3: mean bias up to ~0.63 posterior sd on missing
      pixels (rms ~0.31; ~19 standard errors), observed rms ~0.55 sd; variance ratio ~0.97 on
      missing pixels, ~0.28 on observed ones. With zeta = 0.03 the data barely act (bias up to
      ~4 sd, variance ~6.6x the posterior's, i.e. close to the prior).
    * DPS, 100 steps, zeta = 0.5: bias up to ~1.0 sd (rms ~0.41), variance ratio ~0.50 on missing
      pixels; with zeta = 0.05 bias up to ~3.3 sd and variance ~3x.

    The data steps of both use the gradient of the norm |y - A D(x)| with a fixed step, not the
    likelihood gradient, so there is no reason to expect calibration."""
    st = _posterior_stats(padis, nfe=150, inner=5, zeta=0.3)
    miss, b = st["missing"], st["bias_sd"]
    assert 0.3 < float(b[miss].abs().max()) < 1.0
    assert 0.6 < float(st["var_ratio"][miss].median()) < 1.4
    st = _posterior_stats(dps, nfe=100, zeta=0.5)
    miss, b = st["missing"], st["bias_sd"]
    assert 0.5 < float(b[miss].abs().max()) < 1.5
    assert 0.3 < float(st["var_ratio"][miss].median()) < 0.7


@pytest.mark.parametrize("sigma", [0.05, 0.3])
def test_pnp_admm_with_the_exact_gaussian_denoiser_reaches_the_posterior_mean(sigma):
    """The Gaussian MMSE denoiser at level sigma is the prox of the prior's negative log density
    with weight sigma^2, so PnP-ADMM at a fixed sigma is ADMM on the MAP problem, whose solution
    is the posterior mean; exact data steps (2 CG steps: A^T A is a projection)."""
    prior, op, _, y = problem(sy=SY)
    m, _ = exact_posterior(prior, op, y, SY)
    ev = last(pnp_admm(op, y, prior=prior, nfe=300, sigma_start=sigma, sigma_end=sigma,
                       cg_iterations=2, data_std=SY))
    err = float((ev.estimate.reshape(-1) - m).abs().max())
    assert err < 1e-6, err
    # a wrong data weight converges elsewhere: the test can fail
    ev = last(pnp_admm(op, y, prior=prior, nfe=300, sigma_start=sigma, sigma_end=sigma,
                       cg_iterations=2, data_std=3 * SY))
    assert float((ev.estimate.reshape(-1) - m).abs().max()) > 1e-2


# ------------------------------------------------------------------------------------------------
# (c) cancellation, (d) nfe counts and events
# ------------------------------------------------------------------------------------------------

SAMPLERS = {
    "dds": (dds, dict(nfe=6, cg_iterations=2), 6),
    "dps": (dps, dict(nfe=6, zeta=0.1), 6),
    "padis": (padis, dict(nfe=6, inner=2, zeta=0.1), 6),
    "langevin": (langevin, dict(nfe=6, inner=2), 6),
    "pnp-admm": (pnp_admm, dict(nfe=6, sigma_start=10.0, sigma_end=0.05, cg_iterations=2), 6),
}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_cancel_after_step_2_raises_with_estimate(name):
    fn, kw, _ = SAMPLERS[name]
    prior, op, _, y = problem()
    token = CancelToken()
    seen = []
    with pytest.raises(Cancelled) as info:
        for ev in fn(op, y, prior=prior, cancel=token, **kw):
            seen.append(ev)
            if ev.step == 2:
                token.cancel()
    assert len(seen) == 2
    assert info.value.estimate is not None
    assert torch.equal(info.value.estimate, seen[-1].estimate)
    assert prior.nfe == 2  # no network evaluation after the cancel


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_events_report_nfe_sigma_and_shapes(name):
    fn, kw, total = SAMPLERS[name]
    prior, op, _, y = problem()
    prior.nfe = 5  # counts are relative to the prior's count at the start
    yb = y.expand(2, -1, -1, -1)
    events = list(fn(op, yb, prior=prior, **kw))
    assert len(events) == total and events[-1].done
    assert [e.step for e in events] == list(range(1, total + 1))
    assert all(e.total == total for e in events)
    assert [e.nfe for e in events] == list(range(1, total + 1))
    assert prior.nfe == 5 + total
    sig = [e.info["sigma"] for e in events]
    assert all(a >= b for a, b in zip(sig, sig[1:])) and sig[0] == pytest.approx(10.0)
    for e in events:
        assert e.estimate.shape == (2, 1, N, N) and e.estimate.dtype == DT
        assert e.denoised is not None and e.denoised.shape == (2, 1, N, N)
        assert not e.estimate.requires_grad and torch.isfinite(e.estimate).all()


def test_padis_reference_defaults_count_1000():
    prior, op, _, y = problem()
    d = get_solver("padis").resolve(op)
    assert d["nfe"] == 1000 and d["inner"] == 10 and d["sigma_min"] == 0.003


def test_dds_defaults_follow_the_noise():
    prior, op, _, y = problem()
    assert get_solver("dds").resolve(op)["gamma"] == math.inf  # the noiseless formulation
    assert get_solver("dds").resolve(op, 0.05)["gamma"] == pytest.approx((0.05 / 0.05) ** 2)


def test_dps_reference_defaults_count_1000():
    prior, op, _, y = problem()
    assert get_solver("dps").resolve(op)["nfe"] == 1000


def test_missing_prior_is_an_input_error():
    from napari_patchdiff.errors import InputError

    _, op, _, y = problem()
    with pytest.raises(InputError):
        next(dds(op, y, prior=None))


# ------------------------------------------------------------------------------------------------
# (e) complex MRI measurements
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_complex_mri_operator_runs(name):
    fn, kw, total = SAMPLERS[name]
    prior = smooth_prior()
    op = make_operator("mri-cartesian", (N, N), dtype=DT, acceleration=4)
    x = prior.mu.reshape(1, 1, N, N) + 0.1 * torch.randn(1, 1, N, N, dtype=DT,
                                                          generator=torch.Generator().manual_seed(0))
    y = op.forward(x)
    assert y.is_complex()
    ev = last(fn(op, y, prior=prior, **kw))
    assert ev.step == total and not ev.estimate.is_complex()
    assert ev.estimate.dtype == DT and torch.isfinite(ev.estimate).all()


def test_dds_mri_fits_the_data():
    """Noiseless DDS on MRI ends data-consistent (A^T A is a projection: CG reaches the data)."""
    prior = smooth_prior()
    op = make_operator("mri-cartesian", (N, N), dtype=DT, acceleration=4)
    g = torch.Generator().manual_seed(1)
    x = (prior.mu + torch.linalg.cholesky(prior.Sigma) @ torch.randn(N * N, generator=g,
                                                                    dtype=DT)).reshape(1, 1, N, N)
    y = op.forward(x)
    ev = last(dds(op, y, prior=prior, nfe=20, eta=0.0, cg_iterations=2))
    rel = torch.linalg.vector_norm(op.forward(ev.estimate) - y) / torch.linalg.vector_norm(y)
    assert float(rel) < 1e-6
    # and it is closer to the truth than the zero-filled reconstruction
    assert float((ev.estimate - x).norm()) < float((op.adjoint(y) - x).norm())


# ------------------------------------------------------------------------------------------------
# registration
# ------------------------------------------------------------------------------------------------


def test_register_is_idempotent_and_specs_run():
    """The package registers the samplers at import; registering again changes nothing."""
    from napari_patchdiff.solvers import SOLVERS, register

    for name in ("dds", "dps", "padis", "langevin", "pnp-admm"):
        assert register(get_solver(name)) is get_solver(name)
    prior, op, _, y = problem()
    for name in ("dds", "dps", "padis", "pnp-admm"):
        spec = get_solver(name)
        assert spec.kind == "diffusion" and name in SOLVERS.names()
        assert "prior" not in {p.name for p in spec.params}
        small = {"dds": dict(nfe=3), "dps": dict(nfe=3), "padis": dict(nfe=3, inner=1),
                 "pnp-admm": dict(nfe=3)}[name]
        params = spec.resolve(op, 0.01, **small)
        ev = last(spec.run(op, y, prior=prior, **params))
        assert ev.step == 3 and ev.nfe == 3


def test_dds_anneal_sigma_shrinks_the_data_weight():
    """Below anneal_sigma the data weight shrinks like sigma^2: with a huge anneal_sigma the
    data no longer enter (two measurements give the same result), with 0 they do."""
    prior, op, _, y = problem(sy=SY)
    other = y + 0.3
    kw = dict(prior=prior, nfe=8, eta=0.0, cg_iterations=1, gamma=1 / SY**2, seed=2)
    a = last(dds(op, y, anneal_sigma=1e9, **kw)).estimate
    b = last(dds(op, other, anneal_sigma=1e9, **kw)).estimate
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    c = last(dds(op, y, anneal_sigma=0.0, **kw)).estimate
    d = last(dds(op, other, anneal_sigma=0.0, **kw)).estimate
    assert float((c - d).abs().max()) > 0.1
