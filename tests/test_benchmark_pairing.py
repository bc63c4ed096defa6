"""``benchmarks/ood.py`` pairs an adapted cell's runs with the unadapted cell's by slice and
sampler seed. Runs recorded before seeds were have neither key; once their cell grew to several
seeds they sit at position ``slice * seeds`` (the order the cell is filled in), not at
``slice``. Pairing them by bare position dropped two of nine pairs of the crop cell and
reported +0.09 dB where the nine pairs say otherwise."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def ood():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("ood_bench", BENCH / "ood.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look themselves up there
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("ood_bench", None)
        sys.path.remove(str(BENCH))


def _run(psnr, slice_=None, seed=None):
    out = {"psnr": psnr}
    if slice_ is not None:
        out.update(slice=slice_, seed=seed)
    return out


def test_runs_without_keys_pair_by_the_order_their_cell_was_filled_in(ood):
    # 3 slices x 3 seeds; seed 0 of each slice recorded before seeds were (no keys)
    plain = {"seeds": 3, "per_slice": [
        _run(10.0), _run(11.0, 0, 1), _run(12.0, 0, 2),
        _run(20.0), _run(21.0, 1, 1), _run(22.0, 1, 2),
        _run(30.0), _run(31.0, 2, 1), _run(32.0, 2, 2)]}
    adapted = {"seeds": 3, "per_slice": [
        _run(p["psnr"] + 1.0, i // 3, i % 3) for i, p in enumerate(plain["per_slice"])]}
    mean, se, n = ood.paired(adapted, plain)
    assert n == 9 and mean == pytest.approx(1.0) and se == pytest.approx(0.0)
    one_seed = {"seeds": 1, "per_slice": [_run(10.0), _run(20.0), _run(30.0)]}
    assert ood.paired(adapted, one_seed)[2] == 3  # slice = position with one seed


def test_a_kept_run_is_stored_with_its_slice_and_seed(ood, monkeypatch):
    """run_cell keeps a cached run (nothing to run here) and writes its keys, so a later
    re-ordering cannot lose them."""
    done = [_run(10.0), _run(20.0)]  # one seed, two slices, no keys
    for p in done:
        p.update(ssim=0.9, seconds=1.0, peak_mib=100.0)
    monkeypatch.setattr(ood.subprocess, "run", lambda *a, **k: pytest.fail("ran a child"))
    cell = ood.run_cell(ood.CASES[0], "DDS", 2, "cpu", 1, seeds=1, done=done, done_seeds=1)
    assert [(p["slice"], p["seed"]) for p in cell["per_slice"]] == [(0, 0), (1, 0)]
