"""The command line end to end on the shipped sample data, and its bad-input messages."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_patchdiff import io
from napari_patchdiff.cli import main


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_reconstruct_ct_slice_writes_outputs(tmp_path, capsys):
    code, out, err = _run(capsys, "reconstruct", "sample:ct", "--slice", 10, "--operator",
                          "ct-parallel", "--views", 20, "--noise", 0.2, "--method", "admm-tv",
                          "--iterations", 20, "--out", tmp_path, "--quiet")
    assert code == 0, err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["method"] == "admm-tv"
    assert report["operator"]["operator"] == "ct-parallel" and report["operator"]["views"] == 20
    assert report["seed"] == 0 and report["iterations"] == 20 and report["seconds"] > 0
    assert 15 < report["psnr"] < 60 and 0 < report["ssim"] <= 1
    recon = tifffile.imread(tmp_path / "recon.tif")
    assert recon.dtype == np.float32 and recon.shape == (256, 256)
    assert recon.min() < -500 and recon.max() > 0, "recon.tif must be in HU like the truth"
    # our own reader accepts it: a slice of a volume keeps only its in-plane spacing
    _, meta = io.read_image(tmp_path / "recon.tif")
    assert len(meta["spacing"]) == 2
    meas = tifffile.imread(tmp_path / "measurement.tif")
    assert meas.shape[0] == 20
    assert "PSNR" in out


def test_measurement_round_trip(tmp_path, capsys):
    """A measurement written by the CLI reconstructs from its sidecar alone."""
    first = tmp_path / "sim"
    code, _, err = _run(capsys, "reconstruct", "sample:mri", "--slice", 12, "--operator",
                        "mri-cartesian", "--acceleration", 4, "--noise", 0.005, "--method",
                        "zero-filled", "--out", first, "--quiet")
    assert code == 0, err
    simulated = json.loads((first / "report.json").read_text())
    second = tmp_path / "measured"
    code, _, err = _run(capsys, "reconstruct", "--measurement", first / "measurement.tif",
                        "--operator", "mri-cartesian", "--method", "zero-filled", "--out",
                        second, "--quiet")
    assert code == 0, err
    a = tifffile.imread(first / "recon.tif") / simulated["mri_scale"]
    b = tifffile.imread(second / "recon.tif")
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert "psnr" not in json.loads((second / "report.json").read_text())


def test_volume_and_other_operators(tmp_path, capsys):
    vol = tmp_path / "vol.npy"
    from napari_patchdiff.io.samples import load_sample

    np.save(vol, load_sample("ct")[0][:2, ::4, ::4])  # 2 slices, 64 x 64, HU
    for op, extra in [("blur-gaussian", ["--sigma", 1.5]), ("superres", ["--factor", 4]),
                      ("inpaint", ["--fraction", 0.5]), ("ct-fan", ["--views", 30]),
                      ("denoise", [])]:
        code, _, err = _run(capsys, "reconstruct", vol, "--operator", op, *extra, "--noise",
                            0.01, "--method", "cg", "--out", tmp_path / op, "--quiet")
        assert code == 0, (op, err)
        assert tifffile.imread(tmp_path / op / "recon.tif").shape == (2, 64, 64)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["reconstruct", "{nan}", "--operator", "denoise", "--out", "{tmp}"], "NaN"),
        (["reconstruct", "{missing}", "--operator", "denoise", "--out", "{tmp}"], "not"),
        (["reconstruct", "{garbage}", "--operator", "denoise", "--out", "{tmp}"], ""),
        (["reconstruct", "{four_d}", "--operator", "denoise", "--out", "{tmp}"], "4D"),
        (["reconstruct", "sample:ct", "--operator", "mri-cartesian", "--views", "8", "--out",
          "{tmp}"], "does not take --views"),
        (["reconstruct", "sample:ct", "--slice", "99", "--operator", "denoise", "--out", "{tmp}"],
         "outside"),
        (["reconstruct", "--operator", "denoise", "--out", "{tmp}"], "either TRUTH"),
        (["reconstruct", "sample:mri", "--slice", "1", "--operator", "mri-cartesian",
          "--method", "fbp", "--out", "{tmp}"], "zero-filled"),
    ],
)
def test_bad_input_gives_clear_error(tmp_path, capsys, argv, message):
    np.save(tmp_path / "nan.npy", np.full((16, 16), np.nan, dtype=np.float32))
    np.save(tmp_path / "four_d.npy", np.zeros((2, 2, 16, 16), dtype=np.float32))
    (tmp_path / "garbage.tif").write_bytes(b"this is not a tiff file at all" * 10)
    paths = {"nan": tmp_path / "nan.npy", "missing": tmp_path / "nope.tif",
             "garbage": tmp_path / "garbage.tif", "four_d": tmp_path / "four_d.npy",
             "tmp": tmp_path / "out"}
    argv = [a.format(**paths) for a in argv]
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert "error:" in err and message in err
    assert not (tmp_path / "out" / "recon.tif").exists(), "a failed run must not write results"


def test_unknown_operator_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["reconstruct", "sample:ct", "--operator", "ct-helical", "--out", "x"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_console_script_help_documents_every_option():
    exe = shutil.which("napari-patchdiff") or [sys.executable, "-m", "napari_patchdiff.cli"]
    cmd = [exe] if isinstance(exe, str) else exe
    out = subprocess.run(cmd + ["reconstruct", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for flag in ["--operator", "--method", "--noise", "--slice", "--seed", "--out", "--views",
                 "--angular-range", "--acceleration", "--sigma", "--factor", "--fraction",
                 "--measurement", "--device", "--iterations"]:
        assert flag in out, flag


def test_train_info_resume(tmp_path, capsys):
    """`train` writes a checkpoint `info` can read; --resume continues the step count."""
    from napari_patchdiff.io.samples import load_sample

    vol = tmp_path / "ct.npy"
    np.save(vol, load_sample("ct")[0][:4, ::4, ::4])  # 4 slices of 64 x 64 in HU
    ckpt = tmp_path / "prior"
    base = ["train", vol, "--out", ckpt, "--config", "tiny", "--patch-sizes", 16,
            "--patch-probs", 1.0, "--batch", 2, "--pad", 8, "--save-every", 2, "--val-every", 4]
    code, out, err = _run(capsys, *base, "--steps", 4)
    assert code == 0, err
    assert "4/4" in err and "memorisation gap by step" in out
    code, out, err = _run(capsys, "info", str(ckpt) + ".safetensors", "--json")
    assert code == 0, err
    meta = json.loads(out)
    assert meta["modality"] == "ct" and meta["steps"] == 4 and meta["pad"] == 8
    # the memorisation monitor ran at the validation of step 4: in the metadata and the output
    assert [h[0] for h in meta["memorisation_history"]] == [4]
    code, _, err = _run(capsys, *base, "--steps", 6)
    assert code == 2 and "resume" in err  # refuses to overwrite silently
    code, _, err = _run(capsys, *base, "--steps", 6, "--resume")
    assert code == 0, err
    assert "6/6" in err and "2/6" not in err
    code, out, _ = _run(capsys, "info", str(ckpt) + ".safetensors")
    assert "steps" in out
    # --init: fine-tune from that prior into a new checkpoint; the step count continues
    tuned = tmp_path / "tuned"
    code, _, err = _run(capsys, *base[:3], tuned, *base[4:], "--steps", 8, "--init",
                        str(ckpt) + ".safetensors")
    assert code == 0, err
    assert "8/8" in err and " 6/8 " not in err
    code, out, err = _run(capsys, "info", str(tuned) + ".safetensors", "--json")
    assert json.loads(out)["initialised_from"]["steps"] == 6


def test_train_two_patch_sizes_without_probabilities(tmp_path, capsys):
    """`--patch-sizes 32 64` alone trains with equal probabilities (it used to crash)."""
    from napari_patchdiff.io.samples import load_sample

    vol = tmp_path / "ct.npy"
    np.save(vol, load_sample("ct")[0][:4, ::4, ::4])
    code, out, err = _run(capsys, "train", vol, "--out", tmp_path / "p", "--network", "tiny",
                          "--patch-sizes", 32, 64, "--steps", 2, "--batch", 1)
    assert code == 0, err
    assert "2/2" in err and "Traceback" not in err
    meta = json.loads((tmp_path / "p.json").read_text())
    assert meta["patch_sizes"] == [32, 64] and meta["patch_probs"] == [0.5, 0.5]
    assert meta["config_name"] == "tiny" and meta["inference_patch_size"] == 56


@pytest.mark.parametrize("options, message", [
    (["--patch-sizes", "32", "64", "--patch-probs", "1"], "1 patch probabilities for 2"),
    (["--patch-probs", "0.5", "0.7", "-0.2"], ">= 0"),
    (["--patch-probs", "0.2", "0.2", "0.2"], "sum to 1"),
    (["--lr", "nan"], "lr must be a finite number"),
    (["--ema", "1.5"], "ema"),
    (["--steps", "0"], "steps"),
    (["--memorisation-threshold", "0.9"], "memorisation_threshold must be > 1"),
    (["--stop-on-memorisation", "--memorisation-probes", "0"], "needs the monitor"),
    (["--memorisation-probes", "1"], "memorisation_probes"),
])
def test_train_bad_options_exit_2_with_one_line(tmp_path, capsys, options, message):
    # the options are checked before the volumes are read: no such file is ever opened
    code, out, err = _run(capsys, "train", tmp_path / "missing.tif", "--out", tmp_path / "p",
                          "--network", "tiny", *options)
    assert code == 2 and message in err, err
    assert err.startswith("napari-patchdiff: error:") and err.strip().count("\n") == 0, err
    assert not (tmp_path / "p.safetensors").exists()


def test_train_options_are_the_declared_ones_with_their_defaults(capsys):
    """``train``'s options, TrainConfig's fields and their defaults all come from TRAIN_PARAMS:
    the CLI's defaults are the API's (the Prior widget's: tests/test_widgets.py), and so is the
    config the CLI makes when no option is given."""
    import dataclasses

    from napari_patchdiff.cli import build_parser
    from napari_patchdiff.cli.train import OPTIONS, _train_config
    from napari_patchdiff.training import TrainConfig
    from napari_patchdiff.training.config import TRAIN_PARAMS

    declared = {p.name: p.default for p in TRAIN_PARAMS}
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert fields == declared  # the API's defaults, in the same order
    args = build_parser().parse_args(["train", "vol.tif", "--out", "p"])
    cli = {name: getattr(args, name) for name in OPTIONS}
    assert set(OPTIONS) <= set(declared)
    for name, value in cli.items():  # argparse gives lists where the API takes tuples
        assert (tuple(value) if isinstance(value, list) else value) == declared[name], name
    assert _train_config(args) == TrainConfig()
    with pytest.raises(SystemExit):  # the declared help names the other options by their flags
        main(["train", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "exceeds --memorisation-threshold at two" in shown and "``" not in shown


@pytest.mark.parametrize("command", ["reconstruct", "sample", "calibrate"])
def test_run_options_are_the_declared_ones(command):
    """--seed, --device, --precision (and --cluster, --workers where the command has them) take
    the defaults of napari_patchdiff.params.RUN_PARAMS, which the Reconstruct widget shows."""
    from napari_patchdiff.cli import build_parser
    from napari_patchdiff.params import RUN_PARAMS

    args = build_parser().parse_args([command, "sample:ct", "--out", "o"])
    for p in RUN_PARAMS:
        if hasattr(args, p.name):
            assert getattr(args, p.name) == p.default, p.name
    assert {p.name for p in RUN_PARAMS if not hasattr(args, p.name)} <= {"cluster", "workers"}


def test_core_messages_name_the_api_and_the_cli_its_flags(tmp_path, capsys):
    """The core names the API's arguments (resume=True); the command line shows its flags
    through API_WORDS, whose every phrase the core still writes."""
    from pathlib import Path

    from napari_patchdiff.cli._common import API_WORDS, in_cli_words

    package = Path(__file__).resolve().parents[1] / "napari_patchdiff"
    # cli/outputs.py (the output folders) writes its messages in the core's words too: the
    # command line translates them like the rest
    core = "".join(f.read_text(encoding="utf-8") for f in package.rglob("*.py")
                   if f.parent.name not in ("cli", "_qt") or f.name == "outputs.py")
    for api_words, cli_words in API_WORDS:
        if isinstance(api_words, str):
            assert api_words in core, api_words
    assert in_cli_words("use adapt={'rank': 12} or less") == "use --adapt-rank 12 or less"
    assert in_cli_words("use fewer samples=, a smaller batch= or fewer workers=") == (
        "use fewer --samples, a smaller --batch or fewer --workers")
    # end to end: an output folder holding earlier results, a 2D image with --slice
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("x")
    code, _, err = _run(capsys, "reconstruct", "sample:ct", "--slice", 1, "--operator",
                        "denoise", "--out", tmp_path / "out", "--quiet")
    assert code == 2 and f"--out {tmp_path / 'out'} holds files" in err, err
    assert "--overwrite replaces only" in err and "overwrite=True" not in err, err
    np.save(tmp_path / "flat.npy", np.zeros((16, 16), np.float32))
    code, _, err = _run(capsys, "reconstruct", tmp_path / "flat.npy", "--slice", 0,
                        "--modality", "unit", "--operator", "denoise", "--out", tmp_path / "o",
                        "--quiet")
    assert code == 2 and "--slice needs a volume" in err and "slice=" not in err, err


def test_info_on_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01garbage")
    code, _, err = _run(capsys, "info", bad)
    assert code == 2 and "error:" in err


def test_cancel_keeps_the_partial_result(tmp_path, capsys, monkeypatch):
    """Ctrl-C mid-run exits 130 and writes the last finished step under partial names
    (recon_partial.tif, report_partial.json), never under the names of a finished run."""
    import napari_patchdiff.cli as cli

    calls = {"n": 0}
    real = cli._Progress.__call__

    def interrupt_at_step_3(self, ev):
        real(self, ev)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli._Progress, "__call__", interrupt_at_step_3)
    code, _, err = _run(capsys, "reconstruct", "sample:ct", "--slice", 3, "--operator",
                        "ct-parallel", "--views", 20, "--method", "admm-tv", "--out", tmp_path)
    assert code == 130 and "cancelled after 3 steps" in err
    report = json.loads((tmp_path / "report_partial.json").read_text())
    assert report["cancelled"] is True and report["iterations"] == 3
    assert tifffile.imread(tmp_path / "recon_partial.tif").shape == (256, 256)
    assert not (tmp_path / "recon.tif").exists() and not (tmp_path / "report.json").exists()


def test_api_cancel_token_carries_partial():
    from napari_patchdiff import api
    from napari_patchdiff.events import Cancelled, CancelToken

    problem = api.simulate(api.load_truth("sample:ct", slice=2), "blur-gaussian", noise_std=0.01)
    token = CancelToken()

    def cancel_after_two(ev):
        if ev.step == 2:
            token.cancel()

    with pytest.raises(Cancelled) as exc:
        api.solve(problem, "cg", cancel=token, on_event=cancel_after_two, iterations=10)
    assert exc.value.partial.report["iterations"] == 2
    assert exc.value.partial.recon.shape == (256, 256)


def test_dds_with_the_shipped_prior(tmp_path, capsys):
    """A diffusion sampler runs from the CLI with a shipped prior and reports its evaluations."""
    code, _, err = _run(capsys, "reconstruct", "sample:ct", "--slice", 10, "--operator",
                        "ct-parallel", "--views", 20, "--noise", 0.2, "--method", "dds",
                        "--prior", "ct", "--nfe", 3, "--seed", 1, "--out", tmp_path, "--quiet")
    assert code == 0, err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["nfe"] == 3 and report["method_params"]["seed"] == 1
    assert report["prior"]["modality"] == "ct" and report["prior"]["kind"] == "patch"


@pytest.mark.parametrize("argv, message", [
    (["--method", "dds"], "needs a prior"),
    (["--method", "fbp", "--prior", "ct"], "does not use a prior"),
    (["--method", "dds", "--prior", "no-such-prior"], "no-such-prior"),
])
def test_prior_errors(tmp_path, capsys, argv, message):
    code, _, err = _run(capsys, "reconstruct", "sample:ct", "--slice", 1, "--operator",
                        "ct-parallel", "--views", 8, *argv, "--out", tmp_path)
    assert code == 2 and message in err


def test_ct_prior_refused_for_mri(tmp_path, capsys):
    code, _, err = _run(capsys, "reconstruct", "sample:mri", "--slice", 12, "--operator",
                        "mri-cartesian", "--method", "dds", "--prior", "ct", "--out", tmp_path)
    assert code == 2 and "trained on ct" in err


def test_sample_writes_the_ensemble_and_its_report(tmp_path, capsys):
    """`sample`: 6 antithetic samples of one CT slice with the shipped prior (3 evaluations)."""
    code, out, err = _run(capsys, "sample", "sample:ct", "--slice", 10, "--operator",
                          "ct-parallel", "--views", 20, "--noise", 0.2, "--prior", "ct", "--nfe", 3,
                          "--samples", 6, "--noise-design", "antithetic", "--roi", "100:140,90:130",
                          "--seed", 2, "--out", tmp_path, "--quiet")
    assert code == 0, err
    samples, meta = io.read_image(tmp_path / "samples.tif")
    assert samples.shape == (6, 256, 256) and meta["units"] == "HU"
    mean, _ = io.read_image(tmp_path / "mean.tif")
    np.testing.assert_allclose(mean, samples.mean(0), atol=0.05)
    std, _ = io.read_image(tmp_path / "std.tif")
    np.testing.assert_allclose(std, samples.std(0, ddof=1), rtol=1e-3, atol=0.05)
    for name in ("lower", "upper", "pair_correlation", "calibration.png"):
        assert (tmp_path / (name if "." in name else name + ".tif")).exists()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["design"] == "antithetic" and report["samples"] == 6 and report["seed"] == 2
    # one batched run of all 6 samples (up to 8 slices per run), 3 evaluations
    assert report["batch"] == 6 and report["nfe"] == 3 and report["nfe_per_sample"] == 3
    assert 0 <= report["coverage"] <= 1 and set(report["calibration"]) >= {"0.9"}
    roi = report["roi"]
    assert roi["pixels"] == 1600 and roi["lower"] <= roi["estimate"] <= roi["upper"]
    assert "within_pair_correlation" in roi and "region mean" in out
    # the same seed gives the same ensemble
    code, _, _ = _run(capsys, "sample", "sample:ct", "--slice", 10, "--operator", "ct-parallel",
                      "--views", 20, "--noise", 0.2, "--prior", "ct", "--nfe", 3, "--samples", 6,
                      "--noise-design", "antithetic", "--seed", 2, "--out", tmp_path / "again",
                      "--quiet")
    np.testing.assert_array_equal(io.read_image(tmp_path / "again" / "samples.tif")[0], samples)


@pytest.mark.parametrize("argv, message", [
    (["--samples", 3, "--noise-design", "antithetic"], "multiple of 2"),
    (["--roi", "300:310,0:5"], "empty"),
    (["--samples", 1], "at least two"),
])
def test_sample_bad_input(tmp_path, capsys, argv, message):
    code, _, err = _run(capsys, "sample", "sample:ct", "--slice", 10, "--operator", "ct-parallel",
                        "--views", 8, "--prior", "ct", "--nfe", 1, *argv, "--out", tmp_path / "o")
    assert code == 2 and message in err, err
    assert not (tmp_path / "o").exists()


def test_demo_job_writes_its_outputs(tmp_path):
    """The README's main job (with 2 evaluations instead of 50 to stay quick)."""
    from napari_patchdiff.demo import run_demo

    report = run_demo(tmp_path, methods=("fbp", "dds", "pnp-admm"), nfe=2)
    assert report["result_method"] == "pnp-admm"
    for m in ("dds", "pnp-admm"):
        assert report["methods"][m]["nfe"] == 2 and report["methods"][m]["prior"]["name"]
    recon, meta = io.read_image(tmp_path / "recon.tif")
    assert recon.shape == (256, 256) and meta["units"] == "HU"
    assert (tmp_path / "figure.png").stat().st_size > 10_000


def test_python_api_and_cli_run_a_method_with_the_same_defaults(tmp_path, capsys):
    """A method called directly from Python, through the API and from the CLI gets the same
    defaults for the operator and noise level, and so the same reconstruction."""
    from napari_patchdiff import api
    from napari_patchdiff.events import run_to_end
    from napari_patchdiff.solvers.classical import admm_tv

    crop = tmp_path / "crop.tif"
    from napari_patchdiff.io.samples import load_sample

    hu = load_sample("ct")[0][10, 96:160, 96:160].astype(np.float32)
    io.write_tiff(crop, hu, {"modality": "ct", "units": "HU"})
    problem = api.simulate(api.load_truth(crop), "ct-parallel", noise_std=0.2, seed=0, views=20)
    direct = run_to_end(admm_tv(problem.op, problem.y, noise_std=0.2)).estimate[0, 0].numpy()
    through_api = api.solve(problem, "admm-tv")
    np.testing.assert_array_equal(direct, through_api.recon)
    code, _, err = _run(capsys, "reconstruct", crop, "--operator", "ct-parallel", "--views", 20,
                        "--noise", 0.2, "--method", "admm-tv", "--out", tmp_path / "cli",
                        "--quiet")
    assert code == 0, err
    report = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert report["method_params"] == api.method_params(problem, "admm-tv")
    assert report["method_params"] == admm_tv.resolve(problem.op, 0.2)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "cli" / "recon.tif"),
                                  problem.truth.to_units(through_api.recon))
