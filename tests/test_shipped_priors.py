"""The priors shipped inside the package are real trained networks, loaded safely."""
import pytest
import torch

from napari_patchdiff.conventions import hu_to_unit
from napari_patchdiff.errors import InputError
from napari_patchdiff.metrics import psnr
from napari_patchdiff.priors import load_prior, read_metadata, shipped_priors
from napari_patchdiff.samples import load_sample

pytestmark = pytest.mark.skipif("ct" not in shipped_priors(), reason="no shipped CT prior")


def test_shipped_ct_prior_metadata():
    meta = read_metadata(shipped_priors()["ct"])
    assert meta["modality"] == "ct" and meta["kind"] == "patch"
    assert meta["pad"] == 24 and meta["inference_patch_size"] == 56
    assert tuple(meta["image_size"]) == (256, 256)
    names = {d["name"] for d in meta["training_data"]}
    assert names == {"lung1.tif", "lung2.tif"}
    lung2 = next(d for d in meta["training_data"] if d["name"] == "lung2.tif")
    assert max(lung2["slices"]) <= 44, "test slices (lung2 50-60) must not be trained on"


def test_shipped_ct_prior_denoises_a_held_out_slice():
    torch.manual_seed(0)
    prior = load_prior("ct")
    x = torch.from_numpy(hu_to_unit(load_sample("ct")[0][[8]]))[:, None]  # lung2 slice 53
    y = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        d = prior.denoise(y, 0.1, generator=torch.Generator().manual_seed(1))
    gain = psnr(d.numpy(), x.numpy()) - psnr(y.numpy(), x.numpy())
    assert gain > 8.0, gain  # a trained prior, not random weights
    assert prior.nfe == 1


def test_shipped_ct_prior_refuses_mismatched_data():
    prior = load_prior("ct")
    with pytest.raises(InputError, match="trained on ct images"):
        prior.check((256, 256), "mri")
    with pytest.raises(InputError, match="resample"):
        prior.check((200, 256), "ct")
