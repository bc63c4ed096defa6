"""The priors shipped inside the package are real trained networks, loaded safely."""
import pytest
import torch

from napari_patchdiff.conventions import hu_to_unit
from napari_patchdiff.errors import InputError
from napari_patchdiff.io.samples import load_sample
from napari_patchdiff.priors import load_prior, read_metadata, shipped_priors
from napari_patchdiff.recon.metrics import psnr

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
    # another image size is not refused: the coordinates are mapped (tests/test_image_size.py)
    assert prior.check((200, 256), "ct")["coordinates"] == "fov-relative-v1"


def _gain(prior, x, sigma=0.1):
    """PSNR gain (dB) of one denoiser call at ``sigma`` on the clean slices ``x`` (D, H, W)."""
    x = torch.from_numpy(x)[:, None].float()
    y = x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        d = prior.denoise(y, sigma, generator=torch.Generator().manual_seed(1))
    return psnr(d.numpy(), x.numpy()) - psnr(y.numpy(), x.numpy())


@pytest.mark.skipif("ct-whole" not in shipped_priors(), reason="no shipped whole-image prior")
def test_shipped_whole_image_prior_is_trained_on_the_ct_split():
    meta = read_metadata(shipped_priors()["ct-whole"])
    assert meta["kind"] == "whole" and meta["modality"] == "ct" and meta["pad"] == 0
    ct = read_metadata(shipped_priors()["ct"])
    assert meta["training_data"] == ct["training_data"]  # the same slices as the patch prior
    assert meta["architecture"] == ct["architecture"]  # the same network
    prior = load_prior("ct-whole")
    assert _gain(prior, hu_to_unit(load_sample("ct")[0][[8]])) > 6.0


@pytest.mark.skipif("mri" not in shipped_priors(), reason="no shipped MRI prior")
def test_shipped_mri_prior_is_trained_on_brain1_and_denoises_brain2():
    from napari_patchdiff.conventions import normalise

    meta = read_metadata(shipped_priors()["mri"])
    assert meta["modality"] == "mri" and meta["kind"] == "patch"
    assert {d["name"] for d in meta["training_data"]} == {"brain1.tif"}  # brain2 is the test set
    prior = load_prior("mri")
    vol, _ = load_sample("mri")  # brain2
    x, _ = normalise(vol, "mri")
    assert _gain(prior, x[[11]]) > 6.0
    with pytest.raises(InputError, match="trained on mri images"):
        prior.check((256, 256), "ct")


def test_shipped_phantom_prior_saw_only_synthetic_images_and_denoises_real_ct():
    """The phantom prior was trained on synthetic sets alone (the 'phantoms' set, then the
    'textured-phantoms' set from those weights, in two stretches), and one denoiser call still
    removes most of the noise of a real CT slice it never saw."""
    meta = read_metadata(shipped_priors()["phantom"])
    assert meta["modality"] == "ct" and meta["kind"] == "patch"
    assert [d["name"] for d in meta["training_data"]] == ["textured phantoms (4000, seed 0)"]
    # three stretches: 3,400 steps on 'phantoms', then twice continued on 'textured-phantoms'
    assert [(s["start_step"], s["end_step"]) for s in meta["segments"]] == [
        (0, 3400), (3400, 5100), (5100, 10000)]
    assert meta["initialised_from"] == {"name": "phantom", "steps": 5100,
                                        "same_training_data": True}
    prior = load_prior("phantom")
    x = torch.from_numpy(hu_to_unit(load_sample("ct")[0][[10]]))[:, None]
    noisy = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        d = prior.denoise(noisy, 0.1, generator=torch.Generator().manual_seed(1))
    gain = psnr(d.numpy(), x.numpy()) - psnr(noisy.numpy(), x.numpy())
    assert gain > 6.0, gain
