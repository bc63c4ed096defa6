"""Output folders: earlier results are kept unless --overwrite, a run's files appear all at
once, a cancelled run's files carry _partial names, files honour the umask (the faults:
tests/test_faults.py)."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import tifffile

from napari_patchdiff.cli import main
from napari_patchdiff.io.samples import load_sample


def _recon(crop, out, *extra):
    return main(["reconstruct", str(crop), "--operator", "denoise", "--noise", "0.05",
                 "--method", "initial", "--out", str(out), "--quiet", *map(str, extra)])


def test_overwrite_replaces_the_earlier_run_whole(crop, tmp_path, capsys):
    out = tmp_path / "out"
    assert _recon(crop, out) == 0
    assert _recon(crop, out) == 2  # refused: earlier results
    assert "holds the results of an earlier run" in capsys.readouterr().err
    assert _recon(crop, out, "--overwrite") == 0
    assert sorted(p.name for p in out.iterdir()) == [".napari-patchdiff.json",
                                                     "measurement.json", "measurement.tif",
                                                     "recon.json", "recon.tif", "report.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_a_failed_write_leaves_the_earlier_results(crop, tmp_path, capsys, monkeypatch):
    import napari_patchdiff.cli as cli

    out = tmp_path / "out"
    assert _recon(crop, out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = cli.write_reconstruction

    def full_disk(folder, *args, **kwargs):
        real(folder, *args, **kwargs)
        raise OSError(28, "No space left on device", str(folder / "report.json"))

    monkeypatch.setattr(cli.reconstruct, "write_reconstruction", full_disk)  # where it is looked up
    code = _recon(crop, out, "--overwrite", "--noise", "0.2")
    err = capsys.readouterr().err
    assert code == 1 and "No space left" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in out.iterdir() if p.name.startswith(".napari-patchdiff.")
                and p.name != ".napari-patchdiff.json"]


def test_outputs_honour_the_umask(crop, tmp_path):
    old = os.umask(0o022)
    try:
        assert _recon(crop, tmp_path / "out") == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    for p in (tmp_path / "out").iterdir():  # the results and the manifest
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p.name


def test_the_guessed_modality_is_said_and_recorded(crop, tmp_path, capsys):
    assert main(["reconstruct", str(crop), "--operator", "denoise", "--method", "initial",
                 "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "modality ct" in err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["modality"] == "ct" and report["modality_reason"]


def test_metrics_out_of_memory_keep_the_reconstruction(crop, tmp_path, monkeypatch):
    from napari_patchdiff.recon import metrics

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(metrics, "ssim", no_memory)
    assert _recon(crop, tmp_path / "o") == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert "psnr" not in report and "memory" in report["metrics_skipped"]
    assert tifffile.imread(tmp_path / "o" / "recon.tif").shape == (64, 64)


def test_problems_larger_than_memory_are_refused_up_front(monkeypatch):
    from napari_patchdiff import api
    from napari_patchdiff.errors import InputError
    from napari_patchdiff.io import files

    truth = api.truth_from_array(np.zeros((256, 256), np.float32), modality="unit")
    monkeypatch.setattr(files, "physical_memory", lambda: 2**23)  # 8 MiB
    with pytest.raises(InputError, match="GiB"):
        api.simulate(truth, "denoise")


@pytest.fixture(scope="module")
def tiny_prior(tmp_path_factory):
    from napari_patchdiff.conventions import hu_to_unit
    from napari_patchdiff.training import TrainConfig, TrainingVolume, train

    out = tmp_path_factory.mktemp("prior") / "tiny"
    vol = hu_to_unit(load_sample("ct")[0][:4, 96:160, 96:160])
    config = TrainConfig(modality="ct", network="tiny", patch_sizes=(16,), patch_probs=(1.0,),
                         batch=2, pad=8, inference_patch_size=16, steps=2, val_fraction=0)
    for _ in train([TrainingVolume(vol, "crop")], out, config):
        pass
    return out.with_suffix(".safetensors")


def test_a_cancelled_ensemble_keeps_whole_batches_under_partial_names(crop, tiny_prior, tmp_path,
                                                                    capsys, monkeypatch):
    import napari_patchdiff.cli as cli

    calls = {"n": 0}

    def interrupt_in_the_second_batch(self, ev, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # batch 2, step 1 (2 steps per batch)
            raise KeyboardInterrupt

    monkeypatch.setattr(cli._Progress, "__call__", interrupt_in_the_second_batch)
    out = tmp_path / "ens"
    code = main(["sample", str(crop), "--operator", "denoise", "--noise", "0.05", "--method",
                 "dds", "--prior", str(tiny_prior), "--nfe", "2", "--samples", "4", "--batch",
                 "2", "--out", str(out), "--quiet"])
    assert code == 130
    names = sorted(p.name for p in out.iterdir())
    assert "samples_partial.tif" in names and "measurement_partial.tif" in names and "report_partial.json" in names
    assert not any(n in names for n in ("samples.tif", "mean.tif", "report.json"))
    assert tifffile.imread(out / "samples_partial.tif").shape == (2, 64, 64)
    assert json.loads((out / "report_partial.json").read_text())["cancelled"] is True


def test_a_region_reaching_past_the_image_is_clipped_and_said(crop, tiny_prior, tmp_path, capsys):
    out = tmp_path / "roi"
    assert main(["sample", str(crop), "--operator", "denoise", "--noise", "0.05", "--method",
                 "dds", "--prior", str(tiny_prior), "--nfe", "2", "--samples", "2", "--roi",
                 "40:80,0:10", "--out", str(out), "--quiet"]) == 0
    assert "clipped to 40:64,0:10" in capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert "clipped" in report["roi"]["clipped"] and report["roi"]["pixels"] == 24 * 10
