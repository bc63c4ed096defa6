"""What is bit-identical and what agrees only to a tolerance (issue 30, item 5).

* Our own reductions (the conjugate-gradient inner products and norms of the data step, the
  power iteration behind ``op.norm()``, DPS's residual norms, the metrics) are summed in an
  order fixed by the data's shape (:func:`napari_patchdiff.operators.linalg.fixed_sum`), so they
  give the same bits whatever the number of torch threads; before, a sum into one value (one
  image's inner product) was split between the threads and rounded differently on 1 and 2
  threads.
* The network's convolutions are torch's (oneDNN on the CPU). On the development CPU (AVX2,
  oneDNN 3.12) one of them (the 1 x 1 skip convolution 256 -> 128 at 14 x 14) rounds
  differently on 1 and 2 threads when a network call holds fewer than 16 patches (a 64 x 64
  crop, or the last chunk of a batch); whole runs then agree to a measured tolerance only. The
  end-to-end test below checks bit-identity across thread counts exactly where the prior's own
  evaluation is thread-count independent on the machine that runs it, and skips elsewhere.
* The same seed, device, precision, thread count and batch size give the same bits, run after
  run (and on a Ray worker: ``tests/test_cluster.py``).
* The batch size changes the samples: a batch's patch shifts come from a generator seeded by
  the batch's index, so with ``batch=2`` samples 2 and 3 are different draws from those of
  ``batch=4``; the first batch's samples agree to rounding (the convolutions see another
  number of patches).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_patchdiff import api
from napari_patchdiff.conventions import HU_RANGE
from napari_patchdiff.io.samples import load_sample
from napari_patchdiff.operators.linalg import conjugate_gradient, power_iteration

#: HU: bound on the difference between 1- and 2-thread samples of the small-crop ensemble below
#: (measured on the development CPU: at most 0.021 HU with 3 evaluations, 0.026 HU (rms 0.005
#: HU) with the default 50), with room for other CPUs' rounding
THREAD_TOLERANCE_HU = 0.1


def _at(threads: int, fn):
    """``fn()`` with ``threads`` torch threads (the earlier count restored)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def _slice(size: int) -> np.ndarray:
    """A centred ``size`` x ``size`` crop of a sample CT slice in HU."""
    o = (256 - size) // 2
    return load_sample("ct")[0][1, o:o + size, o:o + size].astype(np.float32)


def _problem(size: int, views: int = 20):
    truth = api.truth_from_array(_slice(size), meta={"units": "HU"}, modality="ct")
    return api.simulate(truth, "ct-parallel", noise_std=0.05, seed=0, views=views)


@pytest.mark.parametrize("shape", [(1, 1, 256, 256), (3, 1, 181, 217)])
def test_conjugate_gradient_and_power_iteration_do_not_depend_on_the_thread_count(shape):
    g = torch.Generator().manual_seed(0)
    weight = torch.rand(shape, generator=g) + 0.1  # a diagonal SPD operator: exact elementwise
    b = torch.randn(shape, generator=g)
    x0 = torch.zeros(shape)

    def run():
        return [conjugate_gradient(lambda v: weight * v, b, x0, 6, per_item=True),
                conjugate_gradient(lambda v: weight * v, b, x0, 6, per_item=False),
                torch.tensor(power_iteration(lambda v: weight * v, b, 10))]

    one = _at(1, run)
    for threads in (2, 3):
        for a, c in zip(one, _at(threads, run)):
            assert torch.equal(a, c), threads


def test_the_data_consistency_solve_does_not_depend_on_the_thread_count():
    problem = _problem(256)
    op = problem.op
    aty = op.adjoint(problem.y)
    z = torch.zeros_like(aty)

    def run():
        op.__dict__.pop("_norms", None)  # op.norm() is cached: compute it again
        return [torch.tensor(op.norm()), op.solve(z, aty, 10.0, iterations=4),
                op.solve(z, aty, 10.0, iterations=0)]

    one = _at(1, run)
    for a, c in zip(one, _at(2, run)):
        assert torch.equal(a, c)


def test_a_dds_solve_is_bit_identical_across_thread_counts_where_the_network_is():
    """A single 256 x 256 slice (25 patches per network call): its inner products used to be
    split between the threads; now the whole run is as thread-count independent as the
    prior's own evaluation on this machine."""
    problem = _problem(256)
    prior = api.resolve_prior(problem, "dds", "ct")
    x = problem.op.initial(problem.y).float()

    def evaluation():
        with torch.no_grad():
            return prior.denoise(x, 0.5, torch.Generator().manual_seed(1))

    if not torch.equal(_at(1, evaluation), _at(2, evaluation)):
        pytest.skip("the prior's convolutions on this CPU round differently on 1 and 2 threads")
    one = _at(1, lambda: api.solve(problem, "dds", prior=prior, seed=2, nfe=2).recon)
    two = _at(2, lambda: api.solve(problem, "dds", prior=prior, seed=2, nfe=2).recon)
    np.testing.assert_array_equal(one, two)


@pytest.fixture(scope="module")
def crop_ensembles():
    """An antithetic pair of a 64 x 64 crop (4 patches per sample: 8 per network call) on 1
    thread, twice, and on 2 threads, twice."""
    problem = _problem(64)
    prior = api.resolve_prior(problem, "dds", "ct")

    def run():
        r = api.sample(problem, "dds", prior=prior, samples=2, batch=2, design="antithetic",
                       seed=5, nfe=3)
        return np.asarray(r.samples), np.asarray(r.mean), np.asarray(r.std)

    return {t: [_at(t, run), _at(t, run)] for t in (1, 2)}


def test_the_same_thread_count_gives_the_same_bits(crop_ensembles):
    for threads, (first, again) in crop_ensembles.items():
        for a, b in zip(first, again):
            np.testing.assert_array_equal(a, b, err_msg=f"{threads} threads")


def test_thread_counts_agree_to_the_measured_tolerance(crop_ensembles):
    for a, b in zip(crop_ensembles[1][0], crop_ensembles[2][0]):
        assert np.abs(a - b).max() * HU_RANGE <= THREAD_TOLERANCE_HU


def test_the_batch_size_changes_the_later_batches_draws():
    """An ensemble of 4 with batch 2 and with batch 4 (one thread): samples 0 and 1 (the first
    batch of both) agree to rounding; samples 2 and 3 are other draws (batch 1's patch shifts
    come from its own generator), as different as two posterior samples are."""
    problem = _problem(64)
    prior = api.resolve_prior(problem, "dds", "ct")

    def run(batch):
        return np.asarray(api.sample(problem, "dds", prior=prior, samples=4, batch=batch,
                                     design="antithetic", seed=5, nfe=3).samples)

    two, four = _at(1, lambda: run(2)), _at(1, lambda: run(4))
    diff = np.abs(two - four).reshape(4, -1).max(1) * HU_RANGE
    assert diff[:2].max() <= THREAD_TOLERANCE_HU, diff
    assert diff[2:].min() > 10, diff
