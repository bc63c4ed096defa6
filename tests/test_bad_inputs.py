"""A tour of bad and careless input through the command line and the Python API.

Every case must end in the project's own error: through the CLI, exit code 2 and one line on
stderr (no traceback), before anything is computed or written; through the API, an
``InputError``. None may silently change the user's data or lose earlier results.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

from api_tour import not_input_errors
from napari_patchdiff import api, io
from napari_patchdiff.cli import main
from napari_patchdiff.errors import InputError
from napari_patchdiff.io.samples import load_sample


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Small inputs: a HU crop with air, a measurement written by the CLI, broken files."""
    d = tmp_path_factory.mktemp("inputs")
    hu = load_sample("ct")[0][10, 96:160, 96:160].astype(np.float32)
    io.write_tiff(d / "crop.tif", hu, {"modality": "ct", "units": "HU"})
    np.save(d / "nan.npy", np.full((32, 32), np.nan, np.float32))
    np.save(d / "4d.npy", np.zeros((2, 2, 32, 32), np.float32))
    np.save(d / "complex.npy", np.zeros((32, 32), np.complex64))
    np.save(d / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    (d / "garbage.tif").write_bytes(b"II*\x00garbage, not a TIFF")
    (d / "notes.txt").write_text("hello")
    (d / "a_file").write_text("not a folder")
    soft = np.linspace(-120, 60, 64 * 64).reshape(64, 64).astype(np.int16)
    np.save(d / "soft_tissue.npy", soft)  # a HU crop without air: not safely CT or MRI
    assert main(["reconstruct", str(d / "crop.tif"), "--operator", "ct-parallel", "--views",
                 "8", "--noise", "0.5", "--method", "fbp", "--out", str(d / "ct8"),
                 "--quiet"]) == 0
    assert main(["reconstruct", "sample:mri", "--slice", "3", "--operator", "mri-cartesian",
                 "--method", "zero-filled", "--out", str(d / "mri"), "--quiet"]) == 0
    y, meta = io.read_measurement(d / "mri" / "measurement.tif")
    np.save(d / "magnitude.npy", np.abs(y).astype(np.float32))
    meta_bad = dict(io.read_sidecar(d / "ct8" / "measurement.tif"), noise_std="abc")
    sino = tifffile.imread(d / "ct8" / "measurement.tif")
    tifffile.imwrite(d / "bad_noise.tif", sino)
    (d / "bad_noise.json").write_text(json.dumps(meta_bad))
    stack = np.stack([sino, sino])
    tifffile.imwrite(d / "stack.tif", stack)
    (d / "stack.json").write_text(json.dumps(io.read_sidecar(d / "ct8" / "measurement.tif")))
    (d / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    return d


def _cli(capsys, tmp_path, *argv):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    return code, err


def _cases(d, out):
    ct = ["reconstruct", d / "crop.tif", "--operator", "ct-parallel", "--views", 8]
    meas = ["reconstruct", "--measurement", d / "ct8" / "measurement.tif"]
    mri = ["--measurement", d / "mri" / "measurement.tif"]
    smp = ["sample", "sample:ct", "--slice", 10, "--operator", "denoise", "--noise", 0.1,
           "--method", "dds", "--prior", "ct"]
    return {
        "neither truth nor measurement": ["reconstruct", "--operator", "denoise"],
        "both truth and measurement": ct + ["--measurement", d / "ct8" / "measurement.tif"],
        "missing file": ["reconstruct", d / "nope.tif", "--operator", "denoise"],
        "unsupported file type": ["reconstruct", d / "notes.txt", "--operator", "denoise"],
        "corrupt TIFF": ["reconstruct", d / "garbage.tif", "--operator", "denoise"],
        "NaN values": ["reconstruct", d / "nan.npy", "--operator", "denoise"],
        "4D array": ["reconstruct", d / "4d.npy", "--operator", "denoise"],
        "complex image": ["reconstruct", d / "complex.npy", "--operator", "denoise"],
        "pickled objects": ["reconstruct", d / "objects.npy", "--operator", "denoise"],
        "slice outside the volume": ["reconstruct", "sample:ct", "--slice", 99, "--operator",
                                     "denoise"],
        "slice of a 2D image": ct + ["--slice", 1],
        "soft-tissue HU crop, modality unsafe to guess": ["reconstruct", d / "soft_tissue.npy",
                                                          "--operator", "denoise"],
        "unit modality on HU data": ct + ["--modality", "unit"],
        "--out is a file": ct + ["--out", d / "a_file"],
        "--out inside a file": ct + ["--out", d / "a_file" / "sub"],
        "--out holds earlier results": ct + ["--out", d / "ct8"],
        "operator option for another operator": ct + ["--acceleration", 4],
        "zero views": ["reconstruct", d / "crop.tif", "--operator", "ct-parallel", "--views", 0],
        "angular range over 360": ct + ["--angular-range", 400],
        "fan beam source inside the image": ["reconstruct", d / "crop.tif", "--operator",
                                             "ct-fan", "--src-radius", 10],
        "negative noise": ct + ["--noise", -1],
        "method option for another method": ct + ["--method", "admm-tv", "--eta", 0.5],
        "zero iterations": ct + ["--method", "cg", "--iterations", 0],
        "eta above 1": ct + ["--method", "dds", "--prior", "ct", "--eta", 1.5],
        "zero evaluations": ct + ["--method", "dds", "--prior", "ct", "--nfe", 0],
        "diffusion method without a prior": ct + ["--method", "dds"],
        "prior for a classical method": ct + ["--method", "admm-tv", "--prior", "ct"],
        "unknown prior": ct + ["--method", "dds", "--prior", "no-such-prior"],
        "corrupt checkpoint": ct + ["--method", "dds", "--prior", d / "broken.safetensors"],
        "MRI prior for CT": ct + ["--method", "dds", "--prior", "mri"],
        "CUDA without a GPU": ct + ["--device", "cuda"] if not torch.cuda.is_available() else
        ct + ["--device", "cuda:99"],
        "sidecar contradicted: angular range": meas + ["--angular-range", 90],
        "sidecar contradicted: views": meas + ["--views", 20],
        "sidecar contradicted: image shape": meas + ["--image-shape", 32, 32],
        "sidecar contradicted: noise": meas + ["--noise", 0.1],
        "sidecar contradicted: operator": meas + ["--operator", "ct-fan"],
        "sidecar contradicted: MRI mask": ["reconstruct", *mri, "--mask", "random"],
        "sidecar noise std is text": ["reconstruct", "--measurement", d / "bad_noise.tif"],
        "slice outside a measurement stack": ["reconstruct", "--measurement", d / "stack.tif",
                                              "--slice", 99],
        "slice of a single measurement": meas + ["--slice", 0],
        "magnitude data for complex MRI": ["reconstruct", "--measurement", d / "magnitude.npy",
                                           "--operator", "mri-cartesian", "--image-shape", 256,
                                           256],
        "measurement without a sidecar or shape": ["reconstruct", "--measurement",
                                                   d / "magnitude.npy", "--operator", "denoise"],
        "level above 1": smp + ["--level", 1.5],
        "one sample": smp + ["--samples", 1],
        "odd antithetic ensemble": smp + ["--samples", 3, "--noise-design", "antithetic"],
        "rqmc ensemble not in groups of 4": smp + ["--samples", 6, "--noise-design", "rqmc"],
        "missing calibration file": smp + ["--calibration", d / "missing.json"],
        "calibration file that is an image": smp + ["--calibration", d / "crop.tif"],
        "calibrate a measurement": ["calibrate", "--measurement", d / "ct8" / "measurement.tif",
                                    "--prior", "ct"],
        "ensemble of a point estimator": smp[:-4] + ["--method", "pnp-admm", "--prior", "ct"],
        "region is not a box": smp + ["--roi", "a:b"],
        "region outside the image": smp + ["--roi", "500:600,500:600"],
        "negative region": smp + ["--roi=-5:10,0:10"],
        "train: bad patch probabilities": ["train", "ct", "--network", "tiny", "--patch-sizes",
                                           32, 64, "--patch-probs", 0.5, 0.6, "--out", out],
        "train: NaN learning rate": ["train", "ct", "--network", "tiny", "--lr", "nan",
                                     "--out", out],
    }


def test_the_cli_tour_ends_in_one_line_and_exit_2(files, tmp_path, capsys):
    cases = _cases(files, tmp_path / "p")
    assert len(cases) >= 40
    before = sorted(p.name for p in (files / "ct8").iterdir())
    failures = []
    for label, argv in cases.items():
        if not any(a in ("--out",) for a in argv[1:]) and argv[0] != "train":
            argv = argv + ["--out", tmp_path / label.replace(" ", "_").replace(":", "")]
        code, err = _cli(capsys, tmp_path, *argv, *(["--quiet"] if argv[0] != "train" else []))
        lines = [ln for ln in err.splitlines() if ln.strip()]
        if code != 2 or "Traceback" in err or not lines:
            failures.append(f"{label}: exit {code}: {err[-300:]}")
        elif argv[0] != "train" and "--out" in map(str, argv):
            out = argv[list(map(str, argv)).index("--out") + 1]
            if label != "--out holds earlier results" and str(out) != str(files / "a_file") \
                    and out.exists() and any(out.iterdir()):
                failures.append(f"{label}: wrote into {out}")
    assert not failures, "\n".join(failures)
    # nothing of the earlier run was touched
    assert sorted(p.name for p in (files / "ct8").iterdir()) == before


def test_cli_messages_name_the_conflicting_values(files, tmp_path, capsys):
    code, err = _cli(capsys, tmp_path, "reconstruct", "--measurement",
                     files / "ct8" / "measurement.tif", "--angular-range", 90, "--out",
                     tmp_path / "o", "--quiet")
    assert code == 2 and "180" in err and "90" in err and len(err.splitlines()) == 1
    code, err = _cli(capsys, tmp_path, "reconstruct", files / "soft_tissue.npy", "--operator",
                     "denoise", "--out", tmp_path / "o", "--quiet")
    assert code == 2 and "--modality" in err and len(err.splitlines()) == 1


# -- the Python API ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def truth():
    return api.truth_from_array(load_sample("ct")[0][10, 96:160, 96:160], {"modality": "ct"})


def _api_cases(truth, files):
    hu = load_sample("ct")[0][10, 96:160, 96:160].astype(np.float32)
    problem = api.simulate(truth, "ct-parallel", views=8, noise_std=0.5)
    return {
        "complex array": lambda: api.truth_from_array(hu + 1j, {"modality": "ct"}),
        "object array": lambda: api.truth_from_array(np.array([[None]], dtype=object)),
        "boolean array": lambda: api.truth_from_array(hu > 0),
        "slice=True": lambda: api.truth_from_array(np.stack([hu, hu]), {"modality": "ct"},
                                                   slice=True),
        "slice=1.7": lambda: api.truth_from_array(np.stack([hu, hu]), {"modality": "ct"},
                                                  slice=1.7),
        "slice of a 2D image": lambda: api.truth_from_array(hu, {"modality": "ct"}, slice=0),
        "unknown modality": lambda: api.truth_from_array(hu, modality="pet"),
        "views=2.7": lambda: api.simulate(truth, "ct-parallel", views=2.7),
        "views=True": lambda: api.simulate(truth, "ct-parallel", views=True),
        "acceleration=4.9": lambda: api.simulate(truth, "mri-cartesian", acceleration=4.9),
        "mask='diagonal'": lambda: api.simulate(truth, "mri-cartesian", mask="diagonal"),
        "noise_std as text": lambda: api.simulate(truth, "denoise", noise_std="0.1"),
        "negative noise_std": lambda: api.simulate(truth, "denoise", noise_std=-0.1),
        "seed=2**70": lambda: api.simulate(truth, "denoise", seed=2**70),
        "an array for a Truth": lambda: api.simulate(hu, "denoise"),
        "prior=object()": lambda: api.solve(problem, "dds", prior=object()),
        "unknown method": lambda: api.solve(problem, "magic"),
        "unknown parameter": lambda: api.solve(problem, "cg", lam=1.0),
        "iterations as text": lambda: api.solve(problem, "cg", iterations="5"),
        "level 1.5": lambda: api.sample(problem, "dds", prior="ct", level=1.5),
        "ensemble of 1": lambda: api.sample(problem, "dds", prior="ct", samples=1),
        "region outside": lambda: api.sample(problem, "dds", prior="ct",
                                             roi=[(500, 600), (500, 600)]),
        "measurement of the wrong shape": lambda: api.from_measurement(
            np.zeros((3, 3), np.float32), "ct-parallel", (64, 64)),
        "real data for complex MRI": lambda: api.from_measurement(
            np.zeros((64, 64), np.float32), "mri-cartesian", (64, 64)),
        "measurement file contradicted": lambda: api.load_measurement(
            files / "ct8" / "measurement.tif", views=60),
    }


def test_the_api_tour_raises_input_errors(truth, files):
    failures = not_input_errors(_api_cases(truth, files))
    assert not failures, "\n".join(failures)


def test_data_is_never_changed_silently(files):
    """The soft-tissue crop is refused rather than guessed MRI and made positive; with the
    modality given it keeps its negative values."""
    soft = np.load(files / "soft_tissue.npy")
    with pytest.raises(InputError, match="pass modality='ct'"):
        api.load_truth(files / "soft_tissue.npy")
    t = api.load_truth(files / "soft_tissue.npy", modality="ct")
    np.testing.assert_allclose(t.to_units(t.x), soft, atol=0.1)
