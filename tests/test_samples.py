"""Tests for the shipped sample data, the napari sample commands and the intensity conventions."""
from __future__ import annotations

import numpy as np
import pytest

from napari_patchdiff.conventions import denormalise, hu_to_unit, normalise, unit_to_hu
from napari_patchdiff.errors import InputError
from napari_patchdiff.io.samples import SAMPLES, ct_sample, load_sample, mni_sample, mri_sample


def test_ct_sample():
    data, meta = load_sample("ct")
    assert data.shape == (16, 256, 256) and data.dtype == np.int16
    assert meta["modality"] == "ct" and meta["units"] == "HU"
    assert meta["spacing"] == (5.0, 1.254, 1.254)
    assert meta["slices"] == list(range(45, 61))
    assert "pyradiomics" in meta["attribution"]
    assert data.min() >= -1024 and data.max() > 500  # air and bone in HU


def test_mri_sample():
    data, meta = load_sample("mri")
    assert data.shape == (23, 256, 256) and data.dtype == np.int16
    assert meta["modality"] == "mri" and meta["units"] == "scanner units"
    assert meta["spacing"] == (6.5, 0.781, 0.781)
    assert data.min() >= 0


def test_mni_sample_is_isotropic_axial_and_carries_its_licence():
    data, meta = load_sample("mni")
    assert data.shape == (189, 233, 197) and data.dtype == np.int16
    assert meta["modality"] == "mri" and meta["spacing"] == (1.0, 1.0, 1.0)
    assert "Louis Collins" in meta["licence"] and "ICBM152" in meta["source"]
    assert data.min() == 0 and data.max() == 255
    # axial slices, anterior rows first: the frontal lobe is in the top half of a mid slice, and
    # the brain is left-right symmetric (a symmetric template)
    mid = data[95].astype(float)
    rows = np.nonzero(mid.sum(axis=1) > 0)[0]
    assert rows[0] < 40 and rows[-1] > 190
    assert abs(mid[:, :98].sum() - mid[:, 99:].sum()) < 0.02 * mid.sum()


def test_unknown_sample():
    assert SAMPLES == ("ct", "mri", "mni")
    with pytest.raises(InputError, match="unknown sample 'pet'.*ct, mri, mni"):
        load_sample("pet")


@pytest.mark.parametrize("func, name", [(ct_sample, "ct"), (mri_sample, "mri"),
                                        (mni_sample, "mni")])
def test_layer_tuples(func, name):
    layers = func()
    assert isinstance(layers, list) and len(layers) == 1
    data, kwargs, kind = layers[0]
    assert kind == "image" and data.ndim == 3
    assert len(kwargs["scale"]) == data.ndim
    assert kwargs["colormap"] == "gray" and kwargs["metadata"]["sample"] == name
    lo, hi = kwargs["contrast_limits"]
    assert lo < hi


def test_hu_unit_round_trip():
    hu = np.linspace(-1024, 1024, 101, dtype=np.float32)
    np.testing.assert_allclose(unit_to_hu(hu_to_unit(hu)), hu, atol=1e-3)
    assert hu_to_unit(-1024) == 0 and hu_to_unit(0) == 0.5 and hu_to_unit(1024) == 1
    data, _ = load_sample("ct")
    x, scale = normalise(data, "ct")
    assert scale is None and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    inside = (data >= -1024) & (data <= 1024)
    np.testing.assert_allclose(denormalise(x, "ct")[inside], data[inside], atol=1e-2)


def test_mri_normalise_round_trip():
    data, _ = load_sample("mri")
    x, scale = normalise(data, "mri")
    assert scale > 0 and x.max() <= 1
    inside = data <= scale
    np.testing.assert_allclose(denormalise(x, "mri", scale)[inside], data[inside], rtol=1e-5,
                               atol=1e-3)


def test_manifest_validates():
    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution("napari-patchdiff")
    assert pm.name == "napari-patchdiff"
    keys = {s.key: s.display_name for s in pm.contributions.sample_data}
    assert keys == {"ct": "CT volume (lung, 16 slices)", "mri": "MRI volume (brain, 23 slices)",
                    "mni": "MRI template (MNI152 T1, 1 mm isotropic)"}
    assert all(c.id.startswith("napari-patchdiff.") for c in pm.contributions.commands)
    pm.validate_imports()


def test_samples_module_imports_no_napari():
    import subprocess
    import sys

    code = "import sys, napari_patchdiff.io.samples; print('napari' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
