"""The plugin in a real napari window (Xvfb): File > Open Sample contributions."""
import numpy as np
import pytest

pytest.importorskip("napari")


@pytest.mark.parametrize("key, shape", [("ct", (16, 256, 256)), ("mri", (23, 256, 256))])
def test_open_sample_in_viewer(make_napari_viewer, key, shape):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-patchdiff", key)
    assert len(layers) == 1
    layer = viewer.layers[-1]
    assert layer.data.shape == shape
    assert layer.metadata["modality"] == key
    assert np.allclose(layer.scale[1:], layer.metadata["spacing"][1:])
    if key == "ct":
        assert tuple(layer.contrast_limits) == (-1000.0, 600.0)
