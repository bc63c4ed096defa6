"""Reliability round 2 (issue 30): repeated or negative slices, TIFFs with several series or
colour samples, singular NIfTI affines, a sidecar modality the values contradict, bad devices
and arguments at the API's entry points, and messages that say what went wrong.

Through the CLI every refusal is exit code 2 and one line on stderr; through the API an
``InputError`` with a one-line message.
"""
from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import pytest
import tifffile
import torch

from api_tour import not_input_errors
from napari_patchdiff import api, io
from napari_patchdiff.cli import main
from napari_patchdiff.errors import InputError, InputWarning
from napari_patchdiff.io.samples import load_sample

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err.strip()


def _one_line_error(code, err):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    return lines[0]


@pytest.fixture(scope="module")
def hu():
    """A 64 x 64 CT crop in HU with air, and a 3-slice volume of such crops."""
    vol = load_sample("ct")[0][8:11, 96:160, 96:160].astype(np.float32)
    return vol[1], vol


@pytest.fixture(scope="module")
def truth(hu):
    return api.truth_from_array(hu[0], {"modality": "ct"})


# -- 6: calibrate's slices ----------------------------------------------------------------------


def test_calibrate_refuses_a_repeated_slice(hu):
    vol = api.truth_from_array(hu[1], {"modality": "ct"})
    with pytest.raises(InputError, match=r"slice 1 .*more than once") as exc:
        api.calibrate(vol, "denoise", prior="ct", slices=[1, 1, 1], samples=2, nfe=2)
    assert "\n" not in str(exc.value)
    with pytest.raises(InputError, match="at least one slice"):
        api.calibrate(vol, "denoise", prior="ct", slices=[], samples=2, nfe=2)
    with pytest.raises(InputError, match="whole number"):
        api.calibrate(vol, "denoise", prior="ct", slices=[1.5], samples=2, nfe=2)


def test_calibrate_cli_refuses_a_repeated_slice(capsys, tmp_path):
    code, _, err = _cli(capsys, "calibrate", "sample:ct", "--slices", 1, 1, 1, "--operator",
                        "denoise", "--prior", "ct", "--samples", 2, "--nfe", 2, "--out",
                        tmp_path / "cal", "--quiet")
    line = _one_line_error(code, err)
    assert "slice 1" in line and "more than once" in line
    assert not (tmp_path / "cal").exists() or not any((tmp_path / "cal").iterdir())


# -- 7: negative slices; the report records the slice -------------------------------------------


def test_a_negative_slice_is_refused(hu):
    with pytest.raises(InputError, match=r"slice -1 .*negative"):
        api.truth_from_array(hu[1], {"modality": "ct"}, slice=-1)
    with pytest.raises(InputError, match=r"slice -1 .*negative"):
        api.load_truth("sample:ct", slice=-1)


def test_a_negative_slice_of_a_measurement_stack_is_refused(hu, tmp_path):
    vol = api.truth_from_array(hu[1], {"modality": "ct"})
    problem = api.simulate(vol, "ct-parallel", views=8)
    path = io.write_measurement(tmp_path / "stack.tif", problem.y[:, 0].numpy(),
                                problem.describe_measurement())
    with pytest.raises(InputError, match=r"slice -2 .*negative"):
        api.load_measurement(path, slice=-2)
    one = api.load_measurement(path, slice=2)
    result = api.solve(one, "fbp")
    assert result.report["slice"] == 2
    whole = api.solve(api.load_measurement(path), "fbp")
    assert whole.report.get("slice") is None


def test_cli_slice_minus_one_exits_2_and_the_report_records_the_slice(hu, capsys, tmp_path):
    np.save(tmp_path / "vol.npy", hu[1])
    (tmp_path / "vol.json").write_text(json.dumps({"modality": "ct", "units": "HU"}))
    common = ["reconstruct", tmp_path / "vol.npy", "--operator", "ct-parallel", "--views", 8,
              "--method", "fbp", "--quiet"]
    code, _, err = _cli(capsys, *common, "--slice", -1, "--out", tmp_path / "neg")
    assert "-1" in _one_line_error(code, err)
    code, _, err = _cli(capsys, *common, "--slice", 2, "--out", tmp_path / "two")
    assert code == 0, err
    assert json.loads((tmp_path / "two" / "report.json").read_text())["slice"] == 2


# -- 8: a TIFF with two series ------------------------------------------------------------------


def test_a_tiff_with_two_series_is_refused(hu, tmp_path, capsys):
    path = tmp_path / "two.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(hu[0])
        tif.write(hu[0][:32, :32])
    with pytest.raises(InputError, match=r"two\.tif holds 2 image series"):
        io.read_image(path)
    with pytest.raises(InputError, match="2 image series"):
        io.read_measurement(path)
    code, _, err = _cli(capsys, "reconstruct", path, "--modality", "ct", "--operator",
                        "denoise", "--out", tmp_path / "o", "--quiet")
    assert "2 image series" in _one_line_error(code, err)


# -- 10: a NIfTI with a singular affine ---------------------------------------------------------


def _nifti_with_sform(path, sform, qform=None):
    import nibabel

    hdr = nibabel.Nifti1Header()
    hdr.set_data_shape((16, 16, 3))
    hdr.set_data_dtype(np.float32)
    if qform is not None:
        hdr.set_qform(qform, code=1)
    else:
        hdr["qform_code"] = 0
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = sform[0], sform[1], sform[2]
    hdr["sform_code"] = 1
    data = np.linspace(-1000, 500, 16 * 16 * 3, dtype=np.float32).reshape(16, 16, 3)
    nibabel.save(nibabel.Nifti1Image(data, None, header=hdr), path)
    return path


def test_a_nifti_with_a_singular_sform_is_refused(tmp_path):
    path = _nifti_with_sform(tmp_path / "zero.nii", np.zeros((4, 4)))
    with pytest.raises(InputError, match=r"zero\.nii.*singular"):
        io.read_image(path)


def test_a_singular_sform_falls_back_to_a_valid_qform(tmp_path):
    qform = np.diag([2.0, 3.0, 4.0, 1.0])
    qform[:3, 3] = [10, 20, 30]
    path = _nifti_with_sform(tmp_path / "q.nii.gz", np.zeros((4, 4)), qform)
    _, meta = io.read_image(path)
    affine = np.array(meta["affine"])
    assert abs(np.linalg.det(affine[:3, :3])) > 1
    # (slice k, row i, col j) -> the qform's (i, j, k)
    np.testing.assert_allclose(affine @ [1, 2, 3, 1], qform @ [2, 3, 1, 1])


def test_a_sidecar_with_a_singular_affine_is_refused(tmp_path, hu):
    np.save(tmp_path / "a.npy", hu[0])
    (tmp_path / "a.json").write_text(json.dumps({"affine": [[0] * 4] * 3 + [[0, 0, 0, 1]]}))
    with pytest.raises(InputError, match="singular"):
        io.read_image(tmp_path / "a.npy")


# -- 11: a sidecar modality the values contradict; an explicit modality over the sidecar's ------


@pytest.fixture()
def hu_says_mri(hu, tmp_path):
    return io.write_tiff(tmp_path / "hu_mri.tif", hu[0], {"modality": "mri"})


def test_a_sidecar_modality_contradicted_by_the_values_is_refused(hu_says_mri):
    with pytest.raises(InputError, match=r"mri.*pass modality='ct'") as exc:
        api.load_truth(hu_says_mri)
    assert "sidecar" in str(exc.value) or "metadata" in str(exc.value)


def test_an_explicit_modality_over_the_sidecar_warns(hu_says_mri, hu):
    with pytest.warns(InputWarning, match=r"mri.*ct|ct.*mri"):
        t = api.load_truth(hu_says_mri, modality="ct")
    assert t.modality == "ct"
    np.testing.assert_allclose(t.to_units(t.x), np.clip(hu[0], -1024, 1024), atol=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        api.truth_from_array(hu[0], {"modality": "ct"}, modality="ct")  # the same: no warning


def test_cli_modality_override_is_one_note_line(hu_says_mri, capsys, tmp_path):
    common = ["reconstruct", hu_says_mri, "--operator", "ct-parallel", "--views", 8,
              "--method", "fbp", "--quiet"]
    code, _, err = _cli(capsys, *common, "--out", tmp_path / "guess")
    assert "--modality" in _one_line_error(code, err)
    code, _, err = _cli(capsys, *common, "--modality", "ct", "--out", tmp_path / "ct")
    assert code == 0, err
    notes = [ln for ln in err.splitlines() if ln.startswith("napari-patchdiff: note:")]
    assert len(notes) == 1 and "mri" in notes[0] and "Warning" not in err, err
    report = json.loads((tmp_path / "ct" / "report.json").read_text())
    assert report["modality"] == "ct"


# -- 12: bad arguments at the API's entry points; --device meta --------------------------------


def test_the_api_entry_points_raise_input_errors(truth, hu):
    problem = api.simulate(truth, "denoise", noise_std=0.1)
    cuda = "cuda:7" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    cases = {
        "load_truth(None)": lambda: api.load_truth(None),
        "load_truth(123)": lambda: api.load_truth(123),
        "load_measurement(None)": lambda: api.load_measurement(None),
        "simulate on " + cuda: lambda: api.simulate(truth, "denoise", device=cuda),
        "simulate on banana": lambda: api.simulate(truth, "denoise", device="banana"),
        "simulate on meta": lambda: api.simulate(truth, "denoise", device="meta"),
        "simulate on device 3.5": lambda: api.simulate(truth, "denoise", device=3.5),
        "from_measurement on meta": lambda: api.from_measurement(
            np.zeros((64, 64), np.float32), "denoise", (64, 64), device="meta"),
        "problem.to(meta)": lambda: problem.to("meta"),
        "problem.to(banana)": lambda: problem.to("banana"),
        "calibrate on banana": lambda: api.calibrate(truth, "denoise", prior="ct",
                                                     device="banana"),
        "solve(None)": lambda: api.solve(None, "fbp"),
        "sample(None)": lambda: api.sample(None, "dds", prior="ct"),
        "cancel=True": lambda: api.solve(problem, "cg", cancel=True),
        "on_event=1": lambda: api.solve(problem, "cg", on_event=1),
        "adapt='yes'": lambda: api.solve(problem, "dds", prior="ct", adapt="yes"),
        "calibrate(None)": lambda: api.calibrate(None, "denoise", prior="ct"),
    }
    failures = not_input_errors(cases)
    assert not failures, "\n".join(failures)


def test_a_tensor_that_requires_grad_is_detached_not_changed(hu):
    x = torch.tensor(hu[0], requires_grad=True)
    t = api.truth_from_array(x, {"modality": "ct"})
    np.testing.assert_array_equal(t.x, api.truth_from_array(hu[0], {"modality": "ct"}).x)
    assert x.requires_grad and x.grad is None
    np.testing.assert_array_equal(x.detach().numpy(), hu[0])
    y = torch.zeros(64, 64, requires_grad=True)
    p = api.from_measurement(y, "denoise", (64, 64))
    assert not p.y.requires_grad and y.requires_grad
    p.y += 1
    assert float(y.detach().abs().max()) == 0  # the problem holds a copy


def test_cli_device_meta_is_one_line(capsys, tmp_path):
    code, _, err = _cli(capsys, "reconstruct", "sample:ct", "--slice", 0, "--operator",
                        "denoise", "--method", "cg", "--device", "meta", "--out",
                        tmp_path / "o", "--quiet")
    assert "meta" in _one_line_error(code, err)


# -- 14: messages that say what went wrong ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_prior(tmp_path_factory, hu):
    """A tiny CT patch prior for 64 x 64 images (3 training steps)."""
    from napari_patchdiff.conventions import hu_to_unit
    from napari_patchdiff.training import TrainConfig, TrainingVolume, train

    out = tmp_path_factory.mktemp("prior") / "tiny"
    config = TrainConfig(modality="ct", network="tiny", patch_sizes=(16,), patch_probs=(1.0,),
                         batch=2, pad=8, inference_patch_size=16, steps=3, val_fraction=0)
    for _ in train([TrainingVolume(hu_to_unit(hu[1]), "crop")], out, config):
        pass
    return out


def test_a_diverging_adaptation_says_so(tiny_prior, truth):
    problem = api.simulate(truth, "ct-parallel", views=10)
    with pytest.raises(InputError, match=r"diverged.*a smaller adapt=\{'lr': \.\.\.\}") as exc:
        api.solve(problem, "dds", prior=str(tiny_prior), adapt={"lr": 1e8, "steps": 2}, nfe=5)
    assert "NaN or infinite values" not in str(exc.value).split("diverged")[0]
    # the command line names its flag instead (cli/_common.py API_WORDS)
    from napari_patchdiff.cli._common import in_cli_words

    assert "a smaller --adapt-lr, e.g." in in_cli_words(str(exc.value))


# -- 14b: a prior file that is not a .safetensors checkpoint


def test_a_prior_file_that_is_not_safetensors_says_so(tmp_path, capsys, hu):
    path = tmp_path / "random.bin"
    path.write_bytes(np.random.default_rng(0).bytes(256))
    from napari_patchdiff.priors import load_prior, read_metadata

    for call in (lambda: load_prior(path), lambda: read_metadata(path)):
        with pytest.raises(InputError, match=r"random\.bin exists.*not a \.safetensors"):
            call()
    np.save(tmp_path / "crop.npy", hu[0])
    code, _, err = _cli(capsys, "reconstruct", tmp_path / "crop.npy", "--modality", "ct",
                        "--operator", "denoise", "--method", "dds", "--prior", path, "--out",
                        tmp_path / "o", "--quiet")
    line = _one_line_error(code, err)
    assert "not a .safetensors" in line and "not found" not in line


# -- 14c: a colour TIFF


@pytest.mark.parametrize("channels", [3, 4])
def test_a_colour_tiff_asks_for_grayscale(tmp_path, channels):
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, np.zeros((32, 32, channels), np.uint8), photometric="rgb")
    with pytest.raises(InputError, match=r"colour.*\(32, 32, %d\).*grayscale" % channels):
        io.read_image(path)


def test_a_three_slice_volume_written_by_tifffile_still_reads(tmp_path, hu):
    """tifffile stored a (3, H, W) array as planar RGB by default: still a 3-slice volume."""
    tifffile.imwrite(tmp_path / "vol.tif", hu[1], photometric="rgb", planarconfig="separate")
    array, _ = io.read_image(tmp_path / "vol.tif")
    np.testing.assert_array_equal(array, hu[1])


# -- 14d: train onto an existing checkpoint


def test_train_onto_a_checkpoint_names_the_cli_options(tmp_path, capsys):
    # a volume of the shipped sample data (not "ct", which names ../shared/data)
    vol = tmp_path / "vol.tif"
    io.write_tiff(vol, load_sample("ct")[0][:2, 96:160, 96:160].astype(np.float32),
                  {"modality": "ct", "units": "HU"})
    (tmp_path / "ckpt.safetensors").write_bytes(b"x")
    code, _, err = _cli(capsys, "train", vol, "--network", "tiny", "--steps", 1, "--out",
                        tmp_path / "ckpt", "--quiet")
    line = _one_line_error(code, err)
    assert "--resume" in line and "--overwrite" in line and "resume=True" not in line
    with pytest.raises(InputError, match="resume=True"):  # the API keeps its own words
        api.train([str(vol)], tmp_path / "ckpt", network="tiny", steps=1)


# -- 14e: a truncated TIFF, and what tifffile logs


def _truncated_imagej(tmp_path, hu):
    path = tmp_path / "full.tif"
    tifffile.imwrite(path, hu[1], imagej=True)
    data = path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    return cut


def test_a_truncated_tiff_is_one_line_without_tifffile_logs(tmp_path, hu, caplog, capsys):
    cut = _truncated_imagej(tmp_path, hu)
    level = logging.getLogger("tifffile").level
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(InputError, match=r"cut\.tif is truncated or corrupt"):
            io.read_image(cut)
    assert not [r for r in caplog.records if r.name.startswith("tifffile")], caplog.records
    assert logging.getLogger("tifffile").level == level
    assert not logging.getLogger("tifffile").filters  # nothing left changed
    code, _, err = _cli(capsys, "reconstruct", cut, "--modality", "ct", "--operator",
                        "denoise", "--out", tmp_path / "o", "--quiet")
    assert "truncated" in _one_line_error(code, err)


# -- 15: the operator tells the modality the values cannot -------------------------------------


@pytest.fixture(scope="module")
def mr_magnitudes(tmp_path_factory):
    """MR magnitudes as whole numbers up to 1523 in a TIFF without metadata: CT or MRI?"""
    path = tmp_path_factory.mktemp("mr") / "mr.tif"
    tifffile.imwrite(path, load_sample("mri")[0][12, 96:160, 96:160])
    return path


def test_an_mri_operator_tells_the_modality(mr_magnitudes):
    with pytest.raises(InputError, match="pass modality='ct'"):
        api.load_truth(mr_magnitudes)
    t = api.load_truth(mr_magnitudes, operator="mri-cartesian")
    assert t.modality == "mri" and "mri-cartesian" in t.meta["modality_reason"]
    with pytest.raises(InputError, match="pass modality='ct'"):  # a denoiser says nothing
        api.load_truth(mr_magnitudes, operator="denoise")


def test_a_ct_operator_tells_the_modality_of_a_hu_crop_without_air(tmp_path):
    soft = np.linspace(-120, 60, 64 * 64).reshape(64, 64).astype(np.int16)
    np.save(tmp_path / "soft.npy", soft)
    t = api.load_truth(tmp_path / "soft.npy", operator="ct-parallel")
    assert t.modality == "ct" and "ct-parallel" in t.meta["modality_reason"]
    np.testing.assert_allclose(t.to_units(t.x), soft, atol=0.1)
    with pytest.raises(InputError, match="pass modality='ct'"):  # magnitudes would change
        api.load_truth(tmp_path / "soft.npy", operator="mri-cartesian")


def test_cli_mri_operator_on_mr_magnitudes(mr_magnitudes, capsys, tmp_path):
    code, _, err = _cli(capsys, "reconstruct", mr_magnitudes, "--operator", "mri-cartesian",
                        "--method", "zero-filled", "--out", tmp_path / "o")
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["modality"] == "mri" and "mri-cartesian" in report["modality_reason"]
