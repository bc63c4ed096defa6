"""Split-conformal calibration of per-pixel intervals (napari_patchdiff.uncertainty.calibration),
its use in ensembles, and the `calibrate` command."""
from __future__ import annotations

import json

import numpy as np
import pytest

from napari_patchdiff import io
from napari_patchdiff.cli import main
from napari_patchdiff.errors import InputError
from napari_patchdiff.uncertainty import summarise
from napari_patchdiff.uncertainty.calibration import (Calibration, calibration_curve,
                                                      conformal_factor, fit_calibration,
                                                      load_calibration, scores)

OP = {"operator": "denoise", "image_shape": [32, 32]}


def overconfident(rng, n=8, shape=(32, 32), spread=0.02, error=0.05):
    """Samples whose spread is 2.5x smaller than their actual error: truth ~ N(centre, error),
    samples ~ N(centre, spread), so the sample quantiles cover far too little."""
    centre = rng.uniform(0.2, 0.8, shape)
    truth = centre + rng.normal(0, error, shape)
    samples = centre + rng.normal(0, spread, (n, *shape))
    return samples, truth


def fit(pairs, **kw):
    args = dict(prior="p", operator=OP, noise_std=0.1, method="dds",
                method_params={"nfe": 50}, design="iid", images=["a"] * len(pairs))
    args.update(kw)
    return fit_calibration([s for s, _ in pairs], [t for _, t in pairs], **args)


def test_conformal_factor_is_the_finite_sample_quantile():
    r = np.arange(1, 100, dtype=float)  # 99 scores
    assert conformal_factor(r, 0.9) == 90.0  # ceil(100 * 0.9) = 90th smallest
    assert conformal_factor(r[::-1], 0.5) == 50.0
    with pytest.raises(InputError, match="too few"):
        conformal_factor(np.arange(5.0), 0.95)


def test_calibrated_intervals_cover_at_the_nominal_rate_on_new_images():
    rng = np.random.default_rng(0)
    cal = fit([overconfident(rng) for _ in range(4)])
    for level in ("0.5", "0.8", "0.9", "0.95"):
        assert cal.coverage_calibrated[level] == pytest.approx(float(level), abs=0.01)
    assert cal.coverage_raw["0.9"] < 0.5  # the sample quantiles are far too narrow
    samples, truth = overconfident(rng)
    res = summarise(samples, "iid", truth, level=0.9, calibration=cal)
    assert res.calibrated and res.report["interval"]["kind"] == "calibrated"
    assert abs(res.report["coverage"] - 0.9) < 0.03  # 1024 fresh pixels
    assert res.report["coverage_quantiles"] < 0.5
    np.testing.assert_allclose(res.upper - res.mean, res.mean - res.lower, atol=1e-6)
    # the raw quantiles are kept beside the calibrated bounds
    np.testing.assert_allclose(res.lower_quantile, np.quantile(samples, 0.05, axis=0), atol=1e-6)
    assert set(res.report["calibration_calibrated"]) == {"0.5", "0.8", "0.9", "0.95"}


def test_an_ensemble_smaller_than_the_calibration_keeps_its_quantiles():
    rng = np.random.default_rng(1)
    cal = fit([overconfident(rng)])
    samples, truth = overconfident(rng, n=4)
    res = summarise(samples, "iid", truth, calibration=cal)
    assert not res.calibrated and "fewer than the calibration's 8" in res.report["interval"]["note"]
    np.testing.assert_array_equal(res.lower, res.lower_quantile)


def test_a_calibration_says_why_it_does_not_apply():
    rng = np.random.default_rng(2)
    cal = fit([overconfident(rng)], prior_created="2026-01-01")
    run = dict(prior="p", operator=dict(OP, backend="x"), noise_std=0.11, method="dds",
               method_params={"nfe": 50, "eta": 1.0}, samples=8, level=0.9)
    assert cal.mismatch(**run) is None  # backend and a 10% noise difference do not matter
    cases = [
        (dict(prior="q"), "prior 'p', not 'q'"),
        (dict(prior_created="2026-02-02"), "checkpoint"),
        (dict(operator={"operator": "denoise", "image_shape": [64, 64]}), "image_shape"),
        (dict(noise_std=0.2), "noise 0.1, not 0.2"),
        (dict(method="dps"), "for dds, not dps"),
        (dict(method_params={"nfe": 20}), "nfe = 50, not 20"),
        (dict(samples=4), "only 4"),
        (dict(level=0.99), "level 0.99"),
    ]
    for change, message in cases:
        assert message in cal.mismatch(**{**run, **change}), change
    again = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert again == cal


def test_calibration_files_with_problems_are_refused(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_calibration(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read"):
        load_calibration(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"weights": 1}')
    with pytest.raises(InputError, match="not a napari-patchdiff calibration"):
        load_calibration(tmp_path / "other.json")
    with pytest.raises(InputError, match="truth"):
        scores(np.zeros((4, 8, 8)), np.zeros((8, 9)))


def test_the_raw_calibration_curve_counts_pixels_inside_sample_quantiles():
    samples = np.stack([np.full((2, 2), v) for v in np.linspace(0, 1, 11)])
    truth = np.array([[0.5, 0.97], [0.0, 0.2]])
    curve = calibration_curve(samples, truth, levels=(0.5, 0.9))
    assert curve == {"0.5": 0.25, "0.9": 0.5}


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_calibrate_then_sample_with_the_calibration(tmp_path, capsys):
    """`calibrate` on two slices of the CT sample (denoising, the shipped prior, 2 evaluations,
    4 samples), then `sample` on a third slice with its calibration file."""
    common = ["--operator", "denoise", "--noise", 0.1, "--prior", "ct", "--nfe", 2,
              "--samples", 4, "--quiet"]
    code, out, err = _cli(capsys, "calibrate", "sample:ct", "--slices", 2, 3, *common,
                          "--out", tmp_path / "cal")
    assert code == 0, err
    cal = load_calibration(tmp_path / "cal" / "calibration.json")[0]
    assert cal.prior == "ct" and cal.samples == 4 and cal.method_params["nfe"] == 2
    assert cal.pixels == 2 * 256 * 256 and len(cal.images) == 2
    assert (tmp_path / "cal" / "calibration.png").exists() and "90% factor" in out

    code, _, err = _cli(capsys, "sample", "sample:ct", "--slice", 10, *common,
                        "--calibration", tmp_path / "cal" / "calibration.json",
                        "--out", tmp_path / "s")
    assert code == 0, err
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["interval"]["kind"] == "calibrated"
    lower, meta = io.read_image(tmp_path / "s" / "lower.tif")
    raw, raw_meta = io.read_image(tmp_path / "s" / "lower_quantile.tif")
    assert meta["interval"] == "calibrated" and raw_meta["interval"] == "sample quantiles"
    assert lower.shape == raw.shape == (256, 256)
    assert report["coverage"] > report["coverage_quantiles"]

    # a calibration asked for by name must fit: other evaluations are refused with the reason
    code, _, err = _cli(capsys, "sample", "sample:ct", "--slice", 10, *common, "--nfe", 3,
                        "--calibration", tmp_path / "cal" / "calibration.json",
                        "--out", tmp_path / "t")
    assert code == 2 and "nfe = 2, not 3" in err
    # without one, the bounds are the sample quantiles and the report says so
    code, _, err = _cli(capsys, "sample", "sample:ct", "--slice", 10, *common,
                        "--calibration", "none", "--out", tmp_path / "u")
    assert code == 0, err
    report = json.loads((tmp_path / "u" / "report.json").read_text())
    assert report["interval"]["kind"] == "sample quantiles"
    assert not (tmp_path / "u" / "lower_quantile.tif").exists()
    assert io.read_image(tmp_path / "u" / "lower.tif")[1]["interval"] == "sample quantiles"


@pytest.mark.parametrize("argv, message", [
    (["--slices", 99], "not in the volume"),
    (["--slice", 2], "--slices"),
])
def test_calibrate_bad_input(tmp_path, capsys, argv, message):
    code, _, err = _cli(capsys, "calibrate", "sample:ct", "--operator", "denoise", "--noise",
                        0.1, "--prior", "ct", "--nfe", 2, "--samples", 4, *argv,
                        "--out", tmp_path / "c", "--quiet")
    assert code == 2 and message in err


def test_sparsification_error_is_zero_for_a_std_that_ranks_the_error():
    from napari_patchdiff.uncertainty.calibration import sparsification

    rng = np.random.default_rng(3)
    truth = rng.uniform(size=(16, 16))
    err = rng.normal(size=(16, 16)) * np.linspace(0.01, 0.2, 256).reshape(16, 16)
    mean = truth + err
    perfect = sparsification(mean, np.abs(err), truth)
    assert perfect["ause"] == pytest.approx(0.0, abs=1e-12)
    blind = sparsification(mean, rng.uniform(size=(16, 16)), truth)
    assert blind["ause"] > 0.5 * blind["ause_random"] > 0
    # a std proportional to the error's scale ranks it well but not perfectly
    scale = sparsification(mean, np.linspace(0.01, 0.2, 256).reshape(16, 16), truth)
    assert 0 < scale["ause"] < 0.5 * blind["ause"]


def test_the_shipped_calibrations_apply_to_default_runs_only():
    """The calibrations shipped with the priors (benchmarks/calibration.py --ship) fit a default
    DDS ensemble of 8 samples of 20-view CT at noise 0.2 with the `ct` prior, and say why not
    otherwise; no sampling needed to check it."""
    from napari_patchdiff import api
    from napari_patchdiff.priors import load_prior
    from napari_patchdiff.uncertainty.calibration import resolve_calibration, shipped_calibrations

    assert {c.prior for c in shipped_calibrations()} >= {"ct", "mri"}
    truth = api.load_truth("sample:ct", slice=10)
    problem = api.simulate(truth, "ct-parallel", noise_std=0.2, seed=0, views=20)
    prior = load_prior("ct")

    def resolve(samples=8, **params):
        return resolve_calibration("auto", problem=problem, method="dds", prior=prior,
                                   params=api.method_params(problem, "dds", **params),
                                   samples=samples, level=0.9)

    cal, note = resolve()
    assert cal is not None and note.startswith("calibrated") and cal.factor(0.9) > 1
    for kw, why in ((dict(samples=4), "only 4"), (dict(nfe=20), "nfe = 50, not 20")):
        cal, note = resolve(**kw)
        assert cal is None and why in note and note.startswith("sample quantiles")
