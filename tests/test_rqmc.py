"""The rqmc noise design: an antithetic Latin hypercube in groups of 4
(napari_patchdiff.solvers.noise_source, napari_patchdiff.uncertainty)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from napari_patchdiff.solvers.noise_source import NoiseSource
from napari_patchdiff.uncertainty import Accumulator, SampleEvent, ensemble, region_interval
from test_uncertainty import DDS, gaussian_problem, samples_of

HALF_NORMAL_MEDIAN = stats.norm.ppf(0.75)


def group(seed, shape, m=4):
    return torch.stack([NoiseSource(seed, group=m, member=j, dtype=torch.float64).randn(shape)
                        for j in range(m)])


def test_each_member_is_standard_normal_and_the_group_sums_to_zero():
    z = group(7, (50_000,))
    for member in z.numpy():
        assert stats.kstest(member, "norm").pvalue > 1e-3
    np.testing.assert_allclose(z.sum(0).numpy(), 0.0, atol=1e-12)
    # magnitudes are stratified: per scalar, one pair below the half-normal median, one above
    below = (z.abs()[[0, 2]] < HALF_NORMAL_MEDIAN).sum(0)
    assert (below == 1).all()
    # a second draw continues the stream: different numbers, same structure
    src = NoiseSource(7, group=4, member=0)
    a, b = src.randn((100,)), src.randn((100,))
    assert not torch.equal(a, b) and src.draws == 2


def test_members_of_different_groups_are_independent():
    a, b = group(1, (20_000,)), group(2, (20_000,))
    r = np.corrcoef(a[0].numpy(), b[0].numpy())[0, 1]
    assert abs(r) < 4 / np.sqrt(20_000)


def test_bad_groups_are_refused():
    with pytest.raises(ValueError, match="even"):
        NoiseSource(0, group=3)
    with pytest.raises(ValueError, match="member"):
        NoiseSource(0, group=4, member=4)


def test_rqmc_ensemble_cancels_the_linear_part_like_antithetic_pairs():
    """In the linear-Gaussian model DDS is affine in its noise, so a group whose noise sums to
    zero averages to the zero-noise path: its region mean's CI is tiny."""
    prior, prob, _, _ = gaussian_problem()
    ev = list(ensemble(prob, "dds", prior=prior, samples=8, design="rqmc", seed=2, **DDS))
    s = samples_of(ev)
    done = [e for e in ev if isinstance(e, SampleEvent)]
    assert [(e.pair, e.member) for e in done] == [(k // 4, k % 4) for k in range(8)]
    g = s.reshape(2, 4, *s.shape[1:]).mean(1)
    np.testing.assert_allclose(g[0], g[1], atol=1e-5)
    assert s.std(0).mean() > 1e-3  # the samples themselves differ
    ci = region_interval(s[:, :4, :8].mean(axis=(1, 2)), "rqmc")
    assert ci["half_width"] < 1e-4 and len(ci["group_means"]) == 2
    # the batch size does not change the samples (each member regenerates its group's draw)
    t = samples_of(ensemble(prob, "dds", prior=prior, samples=8, design="rqmc", seed=2,
                            batch=4, **DDS))
    np.testing.assert_allclose(s, t, atol=1e-6)


def test_rqmc_interval_covers_at_the_nominal_rate():
    """Synthetic groups of 4 with exchangeable correlation -0.3: intervals over group means
    cover 90% (2000 repetitions, +-3 binomial sd)."""
    rng = np.random.default_rng(1)
    reps, groups, mu, rho = 2000, 4, 0.2, -0.3
    cov = (np.full((4, 4), rho) + (1 - rho) * np.eye(4)) * 0.01
    hits = 0
    for _ in range(reps):
        f = rng.multivariate_normal(np.full(4, mu), cov, size=groups).reshape(-1)
        ci = region_interval(f, "rqmc", 0.9)
        hits += ci["lower"] <= mu <= ci["upper"]
    assert abs(hits / reps - 0.9) < 3 * np.sqrt(0.09 / reps), hits / reps
    with pytest.raises(Exception, match="groups of 4"):
        region_interval(np.arange(6.0), "rqmc")


def test_a_stopped_rqmc_ensemble_keeps_whole_groups():
    acc = Accumulator("rqmc")
    for k in range(7):
        acc.add(SampleEvent(k, 8, np.zeros((2, 2)), 0, False, k // 4, k % 4, k, 0.0))
    assert len(acc) == 7 and acc.usable == 4
