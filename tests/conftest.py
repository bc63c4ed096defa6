"""Fixtures shared by the test modules."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures(
    "one_thread")``): the test machines have 2 shared cores, where torch's thread pool only adds
    contention; the earlier count is restored after the module."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def crop(tmp_path_factory):
    """A 64 x 64 HU crop of the shipped CT sample (slice 10) as a TIFF with its sidecar: the
    small real input of the output-folder and fault tests."""
    import numpy as np

    from napari_patchdiff import io
    from napari_patchdiff.io.samples import load_sample

    d = tmp_path_factory.mktemp("crop")
    hu = load_sample("ct")[0][10, 96:160, 96:160].astype(np.float32)
    io.write_tiff(d / "crop.tif", hu, {"modality": "ct", "units": "HU"})
    return d / "crop.tif"
