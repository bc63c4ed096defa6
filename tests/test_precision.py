"""The prior network's precision: bfloat16 runs the convolutions in bfloat16 and keeps the rest
in float32; the result stays close to float32's, the report says which, bad choices are errors."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from napari_patchdiff import api
from napari_patchdiff.cli import main
from napari_patchdiff.errors import InputError
from napari_patchdiff.io.samples import load_sample
from napari_patchdiff.priors import load_prior
from napari_patchdiff.priors import precision as precision_mod
from napari_patchdiff.priors.precision import (SlowPrecisionWarning, bfloat16_flags,
                                               choose_precision)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def problem():
    hu = load_sample("ct")[0][8, 96:160, 96:160].astype(np.float32)  # 64 x 64 of a real slice
    truth = api.truth_from_array(hu, modality="ct")
    return api.simulate(truth, "ct-parallel", noise_std=0.2, seed=0, views=20)


@pytest.fixture
def cpu_without_bfloat16(monkeypatch):
    """This test's CPU has no bfloat16 instructions, whatever the machine running it has."""
    monkeypatch.setattr(precision_mod, "cpu_bfloat16_instructions", lambda: ())


@pytest.fixture
def cpu_with_amx(monkeypatch):
    monkeypatch.setattr(precision_mod, "cpu_bfloat16_instructions",
                        lambda: ("amx_bf16", "avx512_bf16"))


def test_the_flags_are_read_from_cpuinfo():
    amx = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    avx2 = "processor\t: 0\nflags\t\t: fpu sse avx2 fma\nbugs\t\t: spectre\n"
    assert bfloat16_flags(amx) == ("amx_bf16", "avx512_bf16")
    assert bfloat16_flags(avx2) == ()
    assert bfloat16_flags("Processor\t: ARMv8\n") is None


def test_auto_is_bfloat16_only_where_the_cpu_multiplies_it(cpu_without_bfloat16, monkeypatch):
    slow = choose_precision("auto", "cpu")
    assert slow.name == "float32" and "no bfloat16 instructions" in slow.reason
    assert choose_precision(None, "cpu") == slow  # None counts as auto
    with pytest.warns(SlowPrecisionWarning, match="7.9 times as slow"):
        forced = choose_precision("bfloat16", "cpu")
    assert forced.name == "bfloat16" and "emulated" in forced.reason  # asked for: it runs
    monkeypatch.setattr(precision_mod, "cpu_bfloat16_instructions", lambda: ("amx_bf16",))
    fast = choose_precision("auto", "cpu")
    assert fast.name == "bfloat16" and "amx_bf16" in fast.reason
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose_precision("bfloat16", "cpu").name == "bfloat16"  # native: no warning
    assert choose_precision("float32", "cpu").name == "float32"
    with pytest.raises(InputError, match="unknown precision"):
        choose_precision("float16", "cpu")


def test_the_default_run_follows_the_cpu_and_the_report_says_why(problem, cpu_without_bfloat16,
                                                                 monkeypatch):
    prior = load_prior("ct")
    auto = api.solve(problem, "dds", prior=prior, nfe=3)
    f32 = api.solve(problem, "dds", prior=prior, nfe=3, precision="float32")
    assert auto.report["prior"]["precision"] == "float32"
    assert "no bfloat16 instructions" in auto.report["prior"]["precision_reason"]
    np.testing.assert_array_equal(auto.recon, f32.recon)  # auto on such a CPU is float32
    monkeypatch.setattr(precision_mod, "cpu_bfloat16_instructions", lambda: ("amx_bf16",))
    fast = api.solve(problem, "dds", prior=prior, nfe=3)
    assert fast.report["prior"]["precision"] == "bfloat16"
    assert "amx_bf16" in fast.report["prior"]["precision_reason"]
    assert prior.precision == "float32"  # the caller's prior is not changed
    assert api.solve(problem, "admm-tv").report.get("prior") is None  # classical: no network


def test_bfloat16_stays_close_to_float32_and_says_so(problem, cpu_with_amx):
    prior = load_prior("ct")
    a = api.solve(problem, "dds", prior=prior, nfe=6, precision="float32")
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


def test_with_precision_shares_the_network_and_refuses_unknown(cpu_with_amx):
    prior = load_prior("ct")
    half = prior.with_precision("bfloat16")
    assert half is not prior and half.denoiser is prior.denoiser
    assert prior.with_precision(None) is prior
    with pytest.raises(InputError, match="unknown precision"):
        prior.with_precision("float16")


def test_cli_precision(problem, tmp_path, capsys, cpu_without_bfloat16):
    code = main(["reconstruct", "sample:ct", "--slice", "8", "--operator", "ct-parallel",
                 "--views", "8", "--method", "admm-tv", "--precision", "bfloat16", "--out",
                 str(tmp_path / "a"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "no network" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())
    code = main(["reconstruct", "sample:ct", "--slice", "8", "--operator", "ct-parallel",
                 "--views", "8", "--method", "dds", "--prior", "ct", "--nfe", "2",
                 "--precision", "bfloat16", "--out", str(tmp_path / "b"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "note: bfloat16 asked for" in err and "7.9 times as slow" in err  # one note line
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["prior"]["precision"] == "bfloat16"
    assert "emulated" in report["prior"]["precision_reason"]
