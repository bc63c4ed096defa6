"""The prior network's precision: bfloat16 runs the convolutions in bfloat16 and keeps the rest
in float32; the result stays close to float32's, the report says which, bad choices are errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from napari_patchdiff import api
from napari_patchdiff.cli import main
from napari_patchdiff.errors import InputError
from napari_patchdiff.io.samples import load_sample
from napari_patchdiff.priors import load_prior


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def problem():
    hu = load_sample("ct")[0][8, 96:160, 96:160].astype(np.float32)  # 64 x 64 of a real slice
    truth = api.truth_from_array(hu, modality="ct")
    return api.simulate(truth, "ct-parallel", noise_std=0.2, seed=0, views=20)


def test_bfloat16_stays_close_to_float32_and_says_so(problem):
    prior = load_prior("ct")
    a = api.solve(problem, "dds", prior=prior, nfe=6)
    b = api.solve(problem, "dds", prior=prior, nfe=6, precision="bfloat16")
    assert prior.precision == "float32"  # the caller's prior is not changed
    assert a.report["prior"]["precision"] == "float32"
    assert b.report["prior"]["precision"] == "bfloat16"
    assert b.recon.dtype == a.recon.dtype
    assert abs(a.report["psnr"] - b.report["psnr"]) < 0.1
    assert not np.array_equal(a.recon, b.recon)  # it did run in another precision
    ens = api.sample(problem, "dds", prior=prior, samples=2, nfe=3, precision="bfloat16",
                     calibration=None)
    assert ens.report["precision"] == "bfloat16"


def test_with_precision_shares_the_network_and_refuses_unknown():
    prior = load_prior("ct")
    half = prior.with_precision("bfloat16")
    assert half is not prior and half.denoiser is prior.denoiser
    assert prior.with_precision(None) is prior and prior.with_precision("float32") is prior
    with pytest.raises(InputError, match="unknown precision"):
        prior.with_precision("float16")


def test_cli_precision(problem, tmp_path, capsys):
    code = main(["reconstruct", "sample:ct", "--slice", "8", "--operator", "ct-parallel",
                 "--views", "8", "--method", "admm-tv", "--precision", "bfloat16", "--out",
                 str(tmp_path / "a"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "no network" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())
    code = main(["reconstruct", "sample:ct", "--slice", "8", "--operator", "ct-parallel",
                 "--views", "8", "--method", "dds", "--prior", "ct", "--nfe", "2",
                 "--precision", "bfloat16", "--out", str(tmp_path / "b"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["prior"]["precision"] == "bfloat16"
